//! What the H.264 and H.265 SPS parsers share: reading an RBSP bit by bit
//! (fixed-width fields and Exp-Golomb codes), removing emulation-prevention
//! bytes, and the parse error. Bounded: every read checks the end.

use std::fmt;

/// Why an SPS could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpsError {
    NotAnSps,
    /// An SPS of a layer other than the base layer (different syntax).
    NotBaseLayer(u8),
    Truncated,
    OutOfRange(&'static str, u32),
}

impl fmt::Display for SpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpsError::NotAnSps => write!(f, "NAL unit is not an SPS"),
            SpsError::NotBaseLayer(layer) => write!(f, "SPS of layer {layer}, not the base layer"),
            SpsError::Truncated => write!(f, "SPS ends early"),
            SpsError::OutOfRange(field, value) => write!(f, "SPS field {field} out of range: {value}"),
        }
    }
}

impl std::error::Error for SpsError {}

/// Reads bits from an RBSP (emulation-prevention bytes already removed).
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> BitReader<'a> {
        BitReader { data, bit: 0 }
    }

    pub(crate) fn bit(&mut self) -> Result<u32, SpsError> {
        let byte = *self.data.get(self.bit / 8).ok_or(SpsError::Truncated)?;
        let value = (byte >> (7 - self.bit % 8)) & 1;
        self.bit += 1;
        Ok(u32::from(value))
    }

    pub(crate) fn flag(&mut self) -> Result<bool, SpsError> {
        Ok(self.bit()? == 1)
    }

    /// Up to 32 bits.
    pub(crate) fn bits(&mut self, n: u32) -> Result<u32, SpsError> {
        let mut value = 0u32;
        for _ in 0..n.min(32) {
            value = (value << 1) | self.bit()?;
        }
        Ok(value)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), SpsError> {
        let end = self.bit.checked_add(n).ok_or(SpsError::Truncated)?;
        if end > self.data.len() * 8 {
            return Err(SpsError::Truncated);
        }
        self.bit = end;
        Ok(())
    }

    /// ue(v): Exp-Golomb, up to 32 bits of value.
    pub(crate) fn ue(&mut self) -> Result<u32, SpsError> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(SpsError::OutOfRange("exp-golomb length", zeros));
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)) as u32)
    }

    /// se(v): signed Exp-Golomb.
    pub(crate) fn se(&mut self) -> Result<i64, SpsError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    pub(crate) fn ue_max(&mut self, field: &'static str, max: u32) -> Result<u32, SpsError> {
        let value = self.ue()?;
        if value > max {
            return Err(SpsError::OutOfRange(field, value));
        }
        Ok(value)
    }
}

/// Removes emulation-prevention bytes (`00 00 03` -> `00 00`).
pub fn nal_to_rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}
