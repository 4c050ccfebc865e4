//! LL-HLS.
pub mod playlist;
pub mod segmenter;
pub mod window;
