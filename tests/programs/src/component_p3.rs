//! The same misbehaviours as `component.rs`, as a wasi:http 0.3 component
//! (`keybust:gateway/endpoint-p3`, the `p3` feature): the host's bounds
//! must hold for an async handler too.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

wit_bindgen::generate!({
    path: "../../wit",
    world: "keybust:gateway/endpoint-p3",
    with: {
        "wasi:http/types@0.3.0": wasip3::http::types,
        "wasi:clocks/types@0.3.0": wasip3::clocks::types,
    },
});

struct Programs;

/// Requests this instance has served, this one included.
static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

export!(Programs);

/// An answer whose body is `chunks`, written by a task that runs on after
/// `handle` returns; with `length`, declared up front.
fn respond(
    status: u16,
    length: Option<usize>,
    chunks: impl Iterator<Item = Vec<u8>> + 'static,
) -> Response {
    let mut entries = vec![("content-type".to_owned(), b"application/json".to_vec())];
    if let Some(length) = length {
        entries.push(("content-length".to_owned(), length.to_string().into_bytes()));
    }
    let headers = Fields::from_list(&entries).unwrap_or_else(|_| Fields::new());
    let (mut writer, reader) = wit_stream::new();
    let (trailers_writer, trailers) = wit_future::new(|| Ok(None));
    wit_bindgen::spawn_local(async move {
        for chunk in chunks {
            if !writer.write_all(chunk).await.is_empty() {
                return;
            }
        }
        drop(writer);
        let _ = trailers_writer.write(Ok(None)).await;
    });
    let (response, _sent) = Response::new(headers, Some(reader), trailers);
    let _ = response.set_status_code(status);
    response
}

fn respond_sized(status: u16, body: Vec<u8>) -> Response {
    let length = body.len();
    respond(status, Some(length), std::iter::once(body))
}

impl exports::wasi::http0_3_0::handler::Guest for Programs {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let query = request.get_path_with_query().unwrap_or_default();
        let mode = query
            .split_once("mode=")
            .map(|(_, value)| value.split('&').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let served = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Ok(match mode.as_str() {
            "count" => respond_sized(200, format!("{{\"served\":{served}}}").into_bytes()),
            "say" => {
                eprintln!("said in request {served}");
                respond_sized(200, br#"{"ok":true}"#.to_vec())
            }
            "trap" => panic!("trapping on purpose"),
            "loop" => crate::spin(),
            "alloc" => crate::hoard(),
            "huge" => respond(200, None, (0..1024).map(|_| vec![b'x'; 64 << 10])),
            "imports" => {
                crate::ask_forever(|| keybust::gateway::origins::is_allowed("https://x.example"))
            }
            _ => respond_sized(200, br#"{"ok":true}"#.to_vec()),
        })
    }
}
