//! wasi:http 0.3: the async `handler.handle`. The body arrives as a
//! stream, read between the policy's two steps; the answer's body leaves
//! as a stream written after `handle` has returned the response.

use super::{Head, Host, wire_headers};
use crate::policy::{self, BodyError, Step};
use alloc::vec::Vec;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::wit_bindgen::StreamResult;
use wasip3::{wit_future, wit_stream};

struct Endpoint;

super::export!(Endpoint with_types_in super);

impl super::exports::wasi::http0_3_0::handler::Guest for Endpoint {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let headers = request.get_headers();
        let head = Head::read(method_name!(request.get_method()), |name| headers.get(name));
        drop(headers);
        let host = Host::default();
        let response = match policy::begin(&head.view(), &host) {
            Step::Answer(response) => response,
            Step::ReadBody(pending) => {
                let body = read_body(request, pending.limit()).await;
                pending.finish(body, &host)
            }
        };
        to_stderr(host.take_warnings()).await;
        Ok(send(response))
    }
}

/// Reads the request body, stopping as soon as it grows past `limit`. A
/// body whose stream ends in an error (the client broke off, the host's
/// bound or deadline) is [`BodyError::Broken`].
async fn read_body(request: Request, limit: usize) -> Result<Vec<u8>, BodyError> {
    // Resolves (to `Ok`, when dropped) once the guest is done with the body.
    let (_done, done) = wit_future::new(|| Ok(()));
    let (mut stream, trailers) = Request::consume_body(request, done);
    let mut buf = Vec::new();
    loop {
        let (result, chunk) = stream.read(Vec::with_capacity(16 * 1024)).await;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
        match result {
            StreamResult::Complete(_) => {}
            StreamResult::Dropped => break,
            StreamResult::Cancelled => return Err(BodyError::Broken),
        }
    }
    drop(stream);
    match trailers.await {
        Ok(_) => Ok(buf),
        Err(_) => Err(BodyError::Broken),
    }
}

/// The policy's answer as a wasi:http response. Its body is written by a
/// task that runs on after `handle` returns: the host reads the stream
/// only once it has the response.
fn send(response: policy::Response) -> Response {
    let headers = Fields::from_list(&wire_headers(&response)).unwrap_or_else(|_| Fields::new());
    let (trailers_writer, trailers) = wit_future::new(|| Ok(None));
    let contents = if response.body.is_empty() {
        drop(trailers_writer);
        None
    } else {
        let (mut writer, reader) = wit_stream::new();
        let body = response.body;
        wasip3::wit_bindgen::spawn_local(async move {
            let _ = writer.write_all(body).await;
            drop(writer);
            // The trailers resolve after the body has ended, as the
            // stream's reader expects.
            let _ = trailers_writer.write(Ok(None)).await;
        });
        Some(reader)
    };
    let (answer, _sent) = Response::new(headers, contents, trailers);
    let _ = answer.set_status_code(response.status);
    answer
}

/// Bytes to the guest's stderr, which the host logs.
async fn to_stderr(bytes: Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    let (mut writer, reader) = wit_stream::new();
    let written = wasip3::cli::stderr::write_via_stream(reader);
    let _ = writer.write_all(bytes).await;
    drop(writer);
    let _ = written.await;
}

/// A panic is a bug: trap at once (the host answers 500 and logs the trap
/// with its backtrace). Its message cannot be written: a wasi:cli 0.3
/// write is asynchronous, and a panic cannot wait for one.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}
