//! streaming-server binary: parses flags, starts each stage with the one
//! shutdown signal, and tears them down in order on SIGINT/SIGTERM.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use streaming_server::cli::{self, Args, Command, FakeCameraArgs, LoadClientArgs};
use streaming_server::codec::Codec;
use streaming_server::fake_camera::{self, Clip};
use streaming_server::metrics::Metrics;
use streaming_server::paths::Paths;
use streaming_server::recorder;
use streaming_server::rtsp_server::{self, RtspServer};
use streaming_server::shutdown::{self, Trigger};
use streaming_server::systemd;
use streaming_server::tasks::TaskSet;
use streaming_server::turn::{TurnMonitor, TurnServer};
use streaming_server::webrtc::{self, WebrtcConfig};
use streaming_server::{config, control, health::Health, load_client, profiling};

fn main() -> ExitCode {
    let args = cli::parse(std::env::args_os());
    env_logger::Builder::new()
        .filter_level(args.log_level.filter())
        // The WebRTC stack (rtc_ice, rtc_dtls, rtc::..., webrtc::...) logs
        // every state change at info; keep it to warnings unless RUST_LOG asks.
        .filter_module("rtc", args.log_level.filter().min(log::LevelFilter::Warn))
        .filter_module("webrtc", args.log_level.filter().min(log::LevelFilter::Warn))
        // Their routine warnings (a check tick before the browser's first
        // check arrives, DTLS server_name defaults) say nothing actionable;
        // our viewer log says when a viewer fails and why.
        .filter_module("rtc_ice", args.log_level.filter().min(log::LevelFilter::Error))
        .filter_module("rtc_dtls", args.log_level.filter().min(log::LevelFilter::Error))
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
    let result = match &args.command {
        Some(Command::FakeCamera(fake)) => run_fake_camera(fake),
        Some(Command::LoadClient(load)) => run_load_client(load),
        None => serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// First SIGINT/SIGTERM starts a graceful stop; a second exits at once.
fn handle_signals(trigger: Arc<Trigger>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    log::info!("signal {signal}: shutting down (again to exit at once)");
                    trigger.trigger();
                } else {
                    log::warn!("second signal: exiting now");
                    std::process::exit(130);
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The clip to play: `file` (its codec by its name, `.h265` is H.265), else
/// the built-in demo clip of `codec`.
fn load_clip(file: Option<&std::path::Path>, codec: Codec) -> Result<Clip, String> {
    match file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Clip::parse(&bytes, fake_camera::codec_of_file(path)).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => fake_camera::demo_clip(codec),
    }
}

fn run_fake_camera(args: &FakeCameraArgs) -> Result<(), String> {
    let mut clip = load_clip(args.file.as_deref(), Codec::H264)?;
    if let Some(format) = args.format {
        clip.format = format;
    }
    let (trigger, shutdown) = shutdown::channel();
    handle_signals(Arc::new(trigger))?;
    fake_camera::run(&args.options(), &clip, &shutdown).map_err(|e| format!("fake camera: {e}"))?;
    Ok(())
}

fn run_load_client(args: &LoadClientArgs) -> Result<(), String> {
    let token = match &args.auth_token_file {
        Some(path) => Some(config::read_secret_file(path)?),
        None => None,
    };
    let options = load_client::LoadOptions {
        url: args.url.clone(),
        viewers: args.viewers,
        duration: Duration::from_secs_f64(args.seconds.max(0.1)),
        stagger: Duration::from_millis(args.stagger_ms),
        local_ip: args.local_ip,
        token,
        path: args.path.clone(),
        codecs: args.codec.clone(),
        hls: args.hls,
        verify: match &args.verify {
            Some(path) => {
                let clip = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let codec = fake_camera::codec_of_file(path);
                Some((codec, Arc::new(load_client::clip_nal_units(codec, &clip))))
            }
            None => None,
        },
        janus_mountpoint: args.janus_mountpoint,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let report = runtime.block_on(load_client::run(options));
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    if report.connected < report.viewers {
        return Err(format!("{} of {} viewers received nothing", report.viewers - report.connected, report.viewers));
    }
    if let Some(hls) = report.hls.as_ref().filter(|h| h.receiving < h.clients) {
        return Err(format!("{} of {} HLS clients received no part", hls.clients - hls.receiving, hls.clients));
    }
    if let Some(bad) = report.clip_nal_units_mismatched.filter(|&n| n > 0) {
        return Err(format!("{bad} NAL units differ from the clip"));
    }
    if report.clip_nal_units_matched == Some(0) {
        return Err("no NAL unit was checked against the clip".into());
    }
    Ok(())
}

fn serve(args: &Args) -> Result<(), String> {
    let (trigger, shutdown) = shutdown::channel();
    let trigger = Arc::new(trigger);
    handle_signals(trigger.clone())?;
    let flags = config::FlagDefaults {
        shm: args.shm.clone(),
        time_bits: args.time_bits,
        demo: args.demo,
        demo_codec: args.demo_codec,
        camera_flag_given: args.camera_flag_given,
        record_path: args.record_path.clone(),
        record_segment: recorder::parse_duration(&args.record_segment)?,
        record_max_bytes: recorder::parse_size(&args.record_max_bytes)?,
        record_min_free: recorder::parse_size(&args.record_min_free)?,
        max_clients: args.max_clients,
        publish: publish_flags(args)?,
    };
    let loaded = config::load(args.config.as_deref(), &flags).map_err(|e| format!("config: {e}"))?;
    let metrics = Arc::new(Metrics::new());
    // One runtime for viewers, sources and every listener: nothing on it
    // blocks (recorder syncs and profiles go to its blocking pool; a ring's
    // media thread is a thread of its own).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("runtime")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;

    // Paths and the three listeners (control, metrics, pprof), bound before
    // any source starts: a port in use ends the start-up here, with nothing
    // left behind.
    let health = Arc::new(Health::new());
    let mut webrtc_config = WebrtcConfig::new(args.max_clients);
    webrtc_config.stun = webrtc::parse_stun(&args.stun);
    webrtc_config.udp_port_range = webrtc::parse_port_range(&args.udp_port_range)?;
    webrtc_config.ips = webrtc::parse_ips(&args.webrtc_ip)?;
    webrtc_config.turn = turn_flags(args)?;
    // Every TURN server any path uses, probed in the background.
    let turn = TurnMonitor::new(
        webrtc_config.turn.iter().cloned().chain(loaded.paths.iter().flat_map(|c| c.turn.iter().flatten().cloned())),
    );
    let auth_token = args.auth_token_file.as_deref().map(config::read_secret_file).transpose()?;
    let hls_config = streaming_server::hls::HlsConfig {
        close_after: recorder::parse_duration(&args.hls_close_after)?.ok_or("-hls-close-after must be at least 1s")?,
        token_query: auth_token.as_deref().map(streaming_server::hls::token_query).unwrap_or_default(),
        ..Default::default()
    };
    let paths = Arc::new(Paths::new(loaded.paths, &metrics, &webrtc_config, hls_config, runtime.handle(), &shutdown)?);
    let listeners = start_listeners(args, auth_token, &metrics, &paths, &health, &turn, &shutdown, runtime.handle())?;
    let rtsp = start_rtsp(args, &loaded.rtsp, &metrics, &paths, &shutdown, runtime.handle())?;

    let sources = TaskSet::new();
    paths.start_sources(runtime.handle(), &sources, &shutdown);
    if !turn.is_empty() {
        sources.spawn(runtime.handle(), turn.clone().run(shutdown.clone()));
    }
    paths.start_publishers(runtime.handle(), &shutdown);
    // systemd Type=notify: a watchdog fed by the ring paths' media threads
    // (only when the unit sets WatchdogSec) and READY below.
    let notifier = systemd::Notifier::from_env();
    let rings: Vec<_> = paths
        .iter()
        .filter_map(|p| streaming_server::source::ring_config(&p.config).map(|c| (p.stream.clone(), c)))
        .collect();
    let watchdog = systemd::spawn_watchdog(&notifier, rings, shutdown.clone()).map_err(|e| e.to_string())?;

    // Keep READY after every listener is bound: systemd starts dependants then.
    let names: Vec<&str> = paths.iter().map(|p| p.name()).collect();
    notifier.ready(&format!("serving {}", names.join(", ")));
    let mut last_read: Vec<u64> = paths.iter().map(|_| 0).collect();
    let mut seconds = 0u64;
    let mut fatal = None;
    while !shutdown.wait_timeout(Duration::from_secs(1)) {
        if let Some((name, why)) = paths.iter().find_map(|p| p.stream.fatal().map(|why| (p.name(), why))) {
            fatal = Some(format!("{name}: {why}"));
            trigger.trigger();
            break;
        }
        for path in paths.iter() {
            health.tick(path.name(), path.stream.source.frames_read.load(Ordering::Relaxed));
        }
        for (url, up) in turn.up() {
            metrics.turn_up.with_label_values(&[&url]).set(i64::from(up));
        }
        seconds += 1;
        if !seconds.is_multiple_of(5) {
            continue;
        }
        release_free_heap();
        for (path, last) in paths.iter().zip(last_read.iter_mut()) {
            let read = path.stream.source.frames_read.load(Ordering::Relaxed);
            if path.stream.source.running.load(Ordering::Relaxed) {
                let m = &path.stream.metrics;
                log::info!(
                    "{}: {:.1} fps, {} frames read, {} dropped, {} read errors, {} process errors, GOP cache {} frames",
                    path.name(),
                    (read - *last) as f64 / 5.0,
                    read,
                    m.frames_dropped.get(),
                    m.read_errors.get(),
                    m.process_errors.get(),
                    path.stream.hub.gop_cache_len()
                );
            }
            *last = read;
        }
    }

    notifier.stopping();
    let started = std::time::Instant::now();
    // Order: the recordings are finished first and in parallel (a disk may
    // be slow: each bounded by recorder::SHUTDOWN_STOP_TIMEOUT); meanwhile
    // stop taking requests (in-flight ones get a short grace) and close
    // viewers; then the sources (media threads, RTSP sessions, demo
    // cameras) end, within the reader's 100 ms wait.
    let closing: Vec<_> = paths
        .iter()
        .map(|p| {
            let recorder = p.recorder.clone();
            std::thread::Builder::new().name("recorder-stop".into()).spawn(move || recorder.shutdown())
        })
        .collect();
    let grace = std::time::Instant::now() + Duration::from_millis(300);
    for listener in listeners {
        listener.stop(grace.saturating_duration_since(std::time::Instant::now()));
    }
    // RTSP clients go with the viewers: their tasks end at the stop signal.
    if let Some(rtsp) = &rtsp {
        rtsp.stop(Duration::from_millis(500));
    }
    let viewers_deadline = std::time::Instant::now() + Duration::from_millis(500);
    for path in paths.iter() {
        if !path.viewers.close_all(viewers_deadline.saturating_duration_since(std::time::Instant::now())) {
            log::warn!("{}: {} viewer tasks still closing at shutdown", path.name(), path.viewers.live_tasks());
        }
    }
    // Publish targets stopped with the trigger: WHIP sessions send their
    // DELETE (each bounded by publish::STOP_TIMEOUT), meanwhile.
    let publishers_deadline = std::time::Instant::now() + streaming_server::publish::STOP_TIMEOUT;
    for path in paths.iter() {
        let left = publishers_deadline.saturating_duration_since(std::time::Instant::now());
        if !path.publishers.wait_stopped(left + Duration::from_millis(200)) {
            log::warn!("{}: {} publish targets still stopping at shutdown", path.name(), path.publishers.live_tasks());
        }
    }
    // HLS muxers stop on the shutdown signal by themselves (no I/O to finish).
    let hls_deadline = std::time::Instant::now() + Duration::from_millis(300);
    for path in paths.iter() {
        if !path.hls.tasks().wait_empty(hls_deadline.saturating_duration_since(std::time::Instant::now())) {
            log::warn!("{}: HLS muxer still stopping at shutdown", path.name());
        }
    }
    for (path, thread) in paths.iter().zip(closing) {
        match thread {
            Ok(thread) => {
                let _ = thread.join();
            }
            Err(_) => path.recorder.shutdown(),
        }
    }
    if !sources.wait_empty(Duration::from_secs(1)) {
        log::warn!("{} sources still stopping at shutdown", sources.len());
    }
    if let Some(watchdog) = watchdog {
        let _ = watchdog.join();
    }
    runtime.shutdown_timeout(Duration::from_millis(200));
    log::info!("stopped in {} ms", started.elapsed().as_millis());
    match fatal {
        Some(why) => Err(format!("{why}; exiting so that the service manager restarts the server")),
        None => Ok(()),
    }
}

/// The `-turn` servers with the `-turn-*` credentials (the same for each).
fn turn_flags(args: &Args) -> Result<Vec<TurnServer>, String> {
    let pass = match &args.turn_pass_file {
        Some(file) => Some(config::read_secret_file(file)?),
        None => Some(args.turn_pass.clone()).filter(|p| !p.is_empty()),
    };
    let secret = args.turn_secret_file.as_deref().map(config::read_secret_file).transpose()?;
    let ttl = recorder::parse_duration(&args.turn_ttl).map_err(|e| format!("-turn-ttl: {e}"))?;
    args.turn
        .iter()
        .map(|url| {
            TurnServer::from_parts(url, Some(&args.turn_user), pass.as_deref(), secret.as_deref(), ttl)
                .map_err(|e| format!("-turn: {e}"))
        })
        .collect()
}

/// The `-publish` targets (for `cam`), with `-publish-token-file`'s token
/// for the WHIP ones.
fn publish_flags(args: &Args) -> Result<Vec<streaming_server::publish::PublishConfig>, String> {
    let token = args.publish_token_file.as_deref().map(config::read_secret_file).transpose()?;
    args.publish
        .iter()
        .map(|url| {
            let whip = url.to_ascii_lowercase().starts_with("whip+");
            streaming_server::publish::parse(url, token.clone().filter(|_| whip)).map_err(|e| format!("-publish: {e}"))
        })
        .collect()
}

/// Binds `-http`, `-metrics` and `-pprof` (an empty address turns the last
/// two off) and registers the process metrics. A bind error names the flag.
#[allow(clippy::too_many_arguments)]
fn start_listeners(
    args: &Args,
    auth_token: Option<String>,
    metrics: &Arc<Metrics>,
    paths: &Arc<Paths>,
    health: &Arc<Health>,
    turn: &TurnMonitor,
    shutdown: &shutdown::Shutdown,
    runtime: &tokio::runtime::Handle,
) -> Result<Vec<streaming_server::http::Listener>, String> {
    let timeout = Duration::from_millis(args.http_timeout_ms.max(1));
    let limits = streaming_server::http::Limits::with_timeout(timeout, control::MAX_CONNECTIONS);
    let config = control::ControlConfig {
        cors_origins: control::parse_origins(&args.cors_origin),
        auth_token,
        limits,
        turn: turn.clone(),
    };
    let mut listeners = Vec::new();
    let http = cli::parse_listen(&args.http)?.ok_or("-http must not be empty")?;
    let control = control::Control::new(paths.clone(), health.clone(), config);
    listeners.push(control.serve(http, runtime).map_err(|e| bind_error("http", &args.http, &e))?);
    if let Some(addr) = cli::parse_listen(&args.metrics)? {
        // CPU, RSS, fds and threads of this process, read from /proc at scrape time.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = metrics.registry.register(Box::new(process)) {
            log::warn!("process metrics: {e}");
        }
        let listener = control::serve_metrics(addr, metrics.clone(), limits, runtime)
            .map_err(|e| bind_error("metrics", &args.metrics, &e))?;
        listeners.push(listener);
    }
    if let Some(addr) = cli::parse_listen(&args.pprof)? {
        let listener = profiling::serve(addr, limits, runtime, shutdown.clone())
            .map_err(|e| bind_error("pprof", &args.pprof, &e))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The RTSP server when `-rtsp` or the config's `rtspAddress` names an
/// address (`-rtsp` wins). Credentials: the config's own, else the API's
/// bearer token as the password, else none.
fn start_rtsp(
    args: &Args,
    file: &config::RtspFileSettings,
    metrics: &Arc<Metrics>,
    paths: &Arc<Paths>,
    shutdown: &shutdown::Shutdown,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<RtspServer>, String> {
    let addr = match cli::parse_listen(&args.rtsp)? {
        Some(addr) => addr,
        None => match file.address {
            Some(addr) => addr,
            None => return Ok(None),
        },
    };
    let auth = match (&file.credentials, &args.auth_token_file) {
        (Some((user, pass)), _) => rtsp_server::Auth::Credentials { user: user.clone(), pass: pass.clone() },
        (None, Some(path)) => rtsp_server::Auth::Token(config::read_secret_file(path)?),
        (None, None) => rtsp_server::Auth::Open,
    };
    let config = rtsp_server::RtspServerConfig {
        addr,
        auth,
        session_timeout: rtsp_server::parse_session_timeout(&args.rtsp_session_timeout)
            .map_err(|e| format!("-rtsp-session-timeout: {e}"))?,
        udp_port_range: webrtc::parse_port_range(&args.rtsp_udp_port_range)
            .map_err(|e| format!("-rtsp-udp-port-range: {e}"))?,
    };
    let shown = if args.rtsp.is_empty() { format!("{addr} (rtspAddress)") } else { args.rtsp.clone() };
    let server = RtspServer::start(config, paths.clone(), metrics, runtime, shutdown)
        .map_err(|e| bind_error("rtsp", &shown, &e))?;
    for path in paths.iter() {
        log::info!("rtsp: {} at {}", path.name(), rtsp_server::url_of(server.addr, path.name()));
    }
    Ok(Some(server))
}

/// `-http :8081 is in use; pass -http :PORT` and the like.
fn bind_error(flag: &str, value: &str, error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::AddrInUse {
        format!("-{flag} {value} is in use (another server running?); pass -{flag} :PORT with a free port")
    } else {
        format!("-{flag} {value}: cannot listen: {error}")
    }
}

/// Hands the heap's free pages back to the kernel. glibc keeps what a burst
/// freed (a viewer's DTLS handshake and catch-up, an SDP exchange) in each
/// thread's arena; trimming every few seconds took ~1 MB off the RSS with 10
/// viewers (README, Performance). Not on the media path: the main thread
/// only waits for shutdown. Each arena is locked for the walk (microseconds).
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and may run on any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
