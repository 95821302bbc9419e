//! The smallest useful wasi:http component: every request gets
//! `200 Hello, WASI!`. `bench/run.sh` serves it with `wasmtime serve` as the
//! baseline for keybust's preflight path.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::io::Write as _;
    use wasip2::http::types::{
        Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
    };

    wasip2::http::proxy::export!(Hello);

    struct Hello;

    impl wasip2::exports::http::incoming_handler::Guest for Hello {
        fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
            let response = OutgoingResponse::new(Fields::new());
            let Ok(body) = response.body() else { return };
            ResponseOutparam::set(response_out, Ok(response));
            if let Ok(mut out) = body.write() {
                let _ = out.write_all(b"Hello, WASI!");
                let _ = out.flush();
            }
            let _ = OutgoingBody::finish(body, None);
        }
    }
}
