use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wit_bindgen::generate!({
    path: "../../wit",
    world: "keybust:gateway/endpoint",
    with: {
        "wasi:http/types@0.2.12": wasip2::http::types,
        "wasi:io/error@0.2.12": wasip2::io::error,
        "wasi:io/poll@0.2.12": wasip2::io::poll,
        "wasi:io/streams@0.2.12": wasip2::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
    },
});

struct Programs;

/// Requests this instance has served, this one included.
static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

export!(Programs);

/// The mode a request without `?mode=` gets, after the marker's prefix,
/// padded with dots. The tests make copies of the built component with
/// another word written here (`support::programs::with_default_mode`):
/// one build then gives a component per behaviour, each under its own
/// digest, and the contract gate, which sends no query, meets that
/// behaviour.
#[used]
static DEFAULT_MODE: [u8; 64] =
    *b"keybust-default-mode:ok.........................................";

/// The default mode, read so that the compiler cannot fold the bytes the
/// tests overwrite.
fn default_mode() -> String {
    let bytes: Vec<u8> = (0..DEFAULT_MODE.len())
        // SAFETY: an index within the static array.
        .map(|i| unsafe { std::ptr::read_volatile(DEFAULT_MODE.as_ptr().add(i)) })
        .collect();
    let text = String::from_utf8_lossy(&bytes);
    text.strip_prefix("keybust-default-mode:")
        .unwrap_or("ok")
        .trim_end_matches('.')
        .to_owned()
}

/// Answers with these headers and body, as the endpoint's policy gives them.
pub(crate) fn respond_with(
    out: ResponseOutparam,
    status: u16,
    entries: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
) {
    let headers = Fields::from_list(&entries).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("fresh response has a body");
    ResponseOutparam::set(out, Ok(response));
    if !body.is_empty() {
        let stream = outgoing.write().expect("fresh body has a stream");
        for piece in body.chunks(4096) {
            if stream.blocking_write_and_flush(piece).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Answers with a body known in full, its length declared, as the endpoint does.
pub(crate) fn respond_sized(out: ResponseOutparam, status: u16, body: Vec<u8>) {
    let length = body.len();
    respond(out, status, Some(length), std::iter::once(body));
}

fn respond(
    out: ResponseOutparam,
    status: u16,
    length: Option<usize>,
    chunks: impl Iterator<Item = Vec<u8>>,
) {
    let mut entries = vec![("content-type".to_owned(), b"application/json".to_vec())];
    if let Some(length) = length {
        entries.push(("content-length".to_owned(), length.to_string().into_bytes()));
    }
    let headers = Fields::from_list(&entries).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response.body().expect("fresh response has a body");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = body.write().expect("fresh body has a stream");
        for chunk in chunks {
            for piece in chunk.chunks(4096) {
                if stream.blocking_write_and_flush(piece).is_err() {
                    return;
                }
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}

/// What the guest can see of the host. Its connection attempts go to
/// `127.0.0.1:port` (`&port=`, default 9), where a test may listen to see
/// whether anything arrives.
fn snoop(port: &str) -> String {
    let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    let args: Vec<String> = std::env::args().collect();
    let secret = std::env::var("CONVEX_SERVER_SHARED_SECRET").ok();
    let file = std::fs::read_to_string("/etc/hostname").is_ok();
    let dir = std::fs::read_dir("/").is_ok();
    let target = format!("127.0.0.1:{port}");
    let tcp = std::net::TcpStream::connect(target.as_str()).is_ok();
    let outbound = {
        let request = OutgoingRequest::new(Fields::new());
        let _ = request.set_scheme(Some(&Scheme::Http));
        let _ = request.set_authority(Some(&target));
        match wasip2::http::outgoing_handler::handle(request, None) {
            Err(_) => false,
            Ok(future) => {
                future.subscribe().block();
                matches!(future.get(), Some(Ok(Ok(_))))
            }
        }
    };
    format!(
        "{{\"env\":{},\"args\":{},\"secret\":{},\"file\":{file},\"dir\":{dir},\"tcp\":{tcp},\"outbound\":{outbound}}}",
        env.len(),
        args.len(),
        secret.is_some(),
    )
}

impl exports::wasi::http0_2_12::incoming_handler::Guest for Programs {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = request.path_with_query().unwrap_or_default();
        let param = |name: &str| {
            query
                .split_once(&format!("{name}="))
                .map(|(_, value)| value.split('&').next().unwrap_or_default().to_owned())
        };
        let mode = param("mode").unwrap_or_else(default_mode);
        if crate::policy::is_mode(&mode) {
            return crate::policy::serve(&mode, &request, out);
        }
        let served = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match mode.as_str() {
            "count" => respond_sized(out, 200, format!("{{\"served\":{served}}}").into_bytes()),
            "say" => {
                eprintln!("said in request {served}");
                respond_sized(out, 200, br#"{"ok":true}"#.to_vec())
            }
            "chatter" => {
                for line in 0..1000 {
                    eprintln!("chatter line {line} of a guest that says too much");
                }
                respond_sized(out, 200, br#"{"ok":true}"#.to_vec())
            }
            "trap" => panic!("trapping on purpose"),
            "loop" => crate::spin(),
            "deep" => {
                let depth = param("depth").and_then(|d| d.parse().ok()).unwrap_or(1000);
                let key = param("key").unwrap_or_default();
                let lookup = format!(r#"{{"keyHash":"{key}"}}"#).into_bytes();
                let sum = crate::deep(depth, &|| {
                    let answer =
                        keybust::gateway::convex::post("/api/internal-get-key-owner", &lookup);
                    answer.map_or(0, |response| u64::from(response.status))
                });
                respond_sized(out, 200, format!("{{\"sum\":{sum}}}").into_bytes())
            }
            "alloc" => crate::hoard(),
            "alloc32" => {
                // 32 MiB, then an answer: within a generous cap, not a tight one.
                let hoard: Vec<Vec<u8>> = (0..32).map(|_| vec![1u8; 1 << 20]).collect();
                std::hint::black_box(&hoard);
                respond_sized(out, 200, br#"{"ok":true}"#.to_vec())
            }
            "huge" => respond(out, 200, None, (0..1024).map(|_| vec![b'x'; 64 << 10])),
            "imports" => {
                crate::ask_forever(|| keybust::gateway::origins::is_allowed("https://x.example"))
            }
            "snoop" => {
                let port = param("port").unwrap_or_else(|| "9".to_owned());
                respond_sized(out, 200, snoop(&port).into_bytes())
            }
            "fields" => {
                // Grow one fields resource until the host refuses (it traps us).
                let fields = Fields::new();
                let mut accepted = 0u64;
                while accepted < 1_000_000 {
                    let name = format!("x-field-{accepted}");
                    if fields.append(&name, &[b'v'; 64]).is_err() {
                        break;
                    }
                    accepted += 1;
                }
                drop(fields);
                let body = format!("{{\"accepted\":{accepted}}}");
                respond_sized(out, 200, body.into_bytes())
            }
            _ => respond_sized(out, 200, br#"{"ok":true}"#.to_vec()),
        }
    }
}
