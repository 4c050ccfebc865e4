//! streaming-server binary: parses flags, starts each stage with the one
//! shutdown signal, and tears them down in order on SIGINT/SIGTERM.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use streaming_server::abi::Layout;
use streaming_server::cli::{self, Args, Command, FakeCameraArgs, LoadClientArgs};
use streaming_server::fake_camera::{self, Clip, FakeCameraOptions, DEMO_CLIP};
use streaming_server::metrics::Metrics;
use streaming_server::pipeline::{self, Media};
use streaming_server::recorder::{self, Recorder, RecorderConfig};
use streaming_server::shm::ReaderConfig;
use streaming_server::shutdown::{self, Trigger};
use streaming_server::systemd;
use streaming_server::webrtc::{self, Viewers, WebrtcConfig};
use streaming_server::{control, health::Health, load_client, profiling};

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

fn load_clip(file: Option<&std::path::Path>) -> Result<Clip, String> {
    match file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Clip::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => Clip::parse(DEMO_CLIP),
    }
}

fn run_fake_camera(args: &FakeCameraArgs) -> Result<(), String> {
    let clip = load_clip(args.file.as_deref())?;
    let (trigger, shutdown) = shutdown::channel();
    handle_signals(Arc::new(trigger))?;
    fake_camera::run(&args.options(), &clip, &shutdown).map_err(|e| format!("fake camera: {e}"))?;
    Ok(())
}

fn run_load_client(args: &LoadClientArgs) -> Result<(), String> {
    let token = match &args.auth_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let options = load_client::LoadOptions {
        url: args.url.clone(),
        viewers: args.viewers,
        duration: Duration::from_secs_f64(args.seconds.max(0.1)),
        stagger: Duration::from_millis(args.stagger_ms),
        local_ip: args.local_ip,
        token,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let report = runtime.block_on(load_client::run(options));
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    if report.connected < report.viewers {
        return Err(format!("{} of {} viewers received nothing", report.viewers - report.connected, report.viewers));
    }
    Ok(())
}

fn serve(args: &Args) -> Result<(), String> {
    let layout = Layout::new(args.time_bits);
    let (trigger, shutdown) = shutdown::channel();
    let trigger = Arc::new(trigger);
    handle_signals(trigger.clone())?;
    let metrics = Arc::new(Metrics::new());
    let media = Media::new(metrics);
    // One runtime for viewers and every listener: nothing on it blocks
    // (recorder syncs and profiles go to its blocking pool).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("runtime")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;

    // Recorder, viewers and the three listeners (control, metrics, pprof),
    // bound before any camera is started: a port in use ends the start-up
    // here, with nothing left behind.
    let health = Arc::new(Health::new());
    let recorder_config = RecorderConfig {
        dir: args.record_path.clone(),
        segment: recorder::parse_duration(&args.record_segment)?,
        max_bytes: recorder::parse_size(&args.record_max_bytes)?,
        min_free: recorder::parse_size(&args.record_min_free)?,
    };
    let recorder = Recorder::with_config(recorder_config, media.clone());
    let mut webrtc_config = WebrtcConfig::new(args.max_clients);
    webrtc_config.stun = webrtc::parse_stun(&args.stun);
    webrtc_config.udp_port_range = webrtc::parse_port_range(&args.udp_port_range)?;
    webrtc_config.ips = webrtc::parse_ips(&args.webrtc_ip)?;
    let viewers = Viewers::new(webrtc_config, media.clone(), shutdown.clone(), runtime.handle().clone())?;
    let listeners = start_listeners(args, &media, &recorder, &viewers, &health, &shutdown, runtime.handle())?;

    let mut shm_name = args.shm.clone();
    let mut demo_camera = None;
    if args.demo {
        shm_name = format!("/streaming_server_demo_{}", std::process::id());
        let options = FakeCameraOptions::new(&shm_name, layout);
        let clip = load_clip(None)?;
        let stop = shutdown.clone();
        demo_camera = Some(
            std::thread::Builder::new()
                .name("demo-camera".into())
                .spawn(move || {
                    if let Err(error) = fake_camera::run(&options, &clip, &stop) {
                        log::error!("demo camera: {error}");
                    }
                })
                .map_err(|e| e.to_string())?,
        );
        // The reader attaches at its first try then, without a "waiting for
        // the camera" line for the normal start.
        wait_for_segment(&shm_name, Duration::from_secs(2));
    }

    let config = ReaderConfig { name: shm_name, layout };
    let media_thread = pipeline::spawn(config.clone(), media.clone(), shutdown.clone()).map_err(|e| e.to_string())?;
    // systemd Type=notify: a watchdog fed by the media path (only when the
    // unit sets WatchdogSec) and READY below.
    let notifier = systemd::Notifier::from_env();
    let watchdog = systemd::spawn_watchdog(&notifier, &media, &config, shutdown.clone()).map_err(|e| e.to_string())?;

    // Keep READY after every listener is bound: systemd starts dependants then.
    notifier.ready(&format!("serving camera segment {}", config.name));
    let mut last_read = 0;
    let mut seconds = 0u64;
    let mut fatal = None;
    while !shutdown.wait_timeout(Duration::from_secs(1)) {
        if let Some(why) = media.fatal() {
            fatal = Some(why.to_string());
            trigger.trigger();
            break;
        }
        let read = media.camera.frames_read.load(Ordering::Relaxed);
        health.tick(read);
        seconds += 1;
        if seconds % 5 != 0 {
            continue;
        }
        release_free_heap();
        log::info!(
            "camera: {:.1} fps, {} frames read, {} dropped, {} read errors, {} process errors, GOP cache {} frames",
            (read - last_read) as f64 / 5.0,
            read,
            media.metrics.frames_dropped.get(),
            media.metrics.read_errors.get(),
            media.metrics.process_errors.get(),
            media.hub.gop_cache_len()
        );
        last_read = read;
    }

    notifier.stopping();
    let started = std::time::Instant::now();
    // Order: the recording is finished first and in parallel (its disk may
    // be slow: bounded by recorder::SHUTDOWN_STOP_TIMEOUT); meanwhile stop
    // taking requests (in-flight ones get a short grace) and close viewers;
    // then stop reading shm, then the demo camera that feeds it.
    let closing = {
        let recorder = recorder.clone();
        std::thread::Builder::new().name("recorder-stop".into()).spawn(move || recorder.shutdown())
    };
    let grace = std::time::Instant::now() + Duration::from_millis(300);
    for listener in listeners {
        listener.stop(grace.saturating_duration_since(std::time::Instant::now()));
    }
    if !viewers.close_all(Duration::from_millis(500)) {
        log::warn!("{} viewer tasks still closing at shutdown", viewers.live_tasks());
    }
    match closing {
        Ok(thread) => {
            let _ = thread.join();
        }
        Err(_) => recorder.shutdown(),
    }
    let _ = media_thread.join();
    if let Some(watchdog) = watchdog {
        let _ = watchdog.join();
    }
    if let Some(camera) = demo_camera {
        let _ = camera.join();
    }
    runtime.shutdown_timeout(Duration::from_millis(200));
    log::info!("stopped in {} ms", started.elapsed().as_millis());
    match fatal {
        Some(why) => Err(format!("{why}; exiting so that the service manager restarts the server")),
        None => Ok(()),
    }
}

/// Waits until the shared-memory segment `name` exists (the demo camera
/// creates it right after start).
fn wait_for_segment(name: &str, timeout: Duration) {
    let path = std::path::Path::new("/dev/shm").join(name.trim_start_matches('/'));
    let deadline = std::time::Instant::now() + timeout;
    while !path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Binds `-http`, `-metrics` and `-pprof` (an empty address turns the last
/// two off) and registers the process metrics. A bind error names the flag.
fn start_listeners(
    args: &Args,
    media: &Media,
    recorder: &Recorder,
    viewers: &Viewers,
    health: &Arc<Health>,
    shutdown: &shutdown::Shutdown,
    runtime: &tokio::runtime::Handle,
) -> Result<Vec<streaming_server::http::Listener>, String> {
    let auth_token = args.auth_token_file.as_deref().map(control::load_token).transpose()?;
    let timeout = Duration::from_millis(args.http_timeout_ms.max(1));
    let limits = streaming_server::http::Limits::with_timeout(timeout, control::MAX_CONNECTIONS);
    let config = control::ControlConfig { cors_origins: control::parse_origins(&args.cors_origin), auth_token, limits };
    let mut listeners = Vec::new();
    let http = cli::parse_listen(&args.http)?.ok_or("-http must not be empty")?;
    let control = control::Control::new(media.clone(), recorder.clone(), viewers.clone(), health.clone(), config);
    listeners.push(control.serve(http, runtime).map_err(|e| bind_error("http", &args.http, &e))?);
    if let Some(addr) = cli::parse_listen(&args.metrics)? {
        // CPU, RSS, fds and threads of this process, read from /proc at scrape time.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = media.metrics.registry.register(Box::new(process)) {
            log::warn!("process metrics: {e}");
        }
        let listener = control::serve_metrics(addr, media.metrics.clone(), limits, runtime)
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
