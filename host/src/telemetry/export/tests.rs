use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

fn parse(args: &[&str]) -> TelemetryArgs {
    let mut argv = vec!["keybust"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).expect("parses").telemetry
}

#[test]
fn off_unless_an_endpoint_or_the_exporter_asks() {
    assert!(!parse(&[]).enabled());
    assert!(parse(&["--otel-exporter-otlp-endpoint", "http://127.0.0.1:4318"]).enabled());
    assert!(parse(&["--otel-traces-exporter", "otlp"]).enabled());
    assert!(
        !parse(&[
            "--otel-traces-exporter",
            "none",
            "--otel-exporter-otlp-endpoint",
            "http://127.0.0.1:4318"
        ])
        .enabled()
    );
}

#[test]
fn traces_go_to_the_base_url_or_the_traces_url() {
    let base = parse(&["--otel-exporter-otlp-endpoint", "http://collector:4318/"]);
    assert_eq!(base.traces_url(), "http://collector:4318/v1/traces");
    let default = parse(&["--otel-traces-exporter", "otlp"]);
    assert_eq!(default.traces_url(), "http://localhost:4318/v1/traces");
    let full = parse(&[
        "--otel-exporter-otlp-endpoint",
        "http://collector:4318",
        "--otel-exporter-otlp-traces-endpoint",
        "http://other:9999/traces",
    ]);
    assert_eq!(full.traces_url(), "http://other:9999/traces");
}

#[test]
fn grpc_is_refused_by_name() {
    let refused = Cli::try_parse_from(["keybust", "--otel-exporter-otlp-protocol", "grpc"]);
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("http/protobuf"), "{message}");
}

#[test]
fn headers_are_decoded_and_bad_ones_refused_without_their_value() {
    let args = parse(&[
        "--otel-exporter-otlp-headers",
        "api-key=s%3Dcret, x-team = blue",
    ]);
    let headers = args.parsed_headers().expect("valid");
    assert_eq!(headers["api-key"], "s=cret");
    assert_eq!(headers["x-team"], "blue");
    let bad = parse(&["--otel-exporter-otlp-headers", "novalue-hunter2"]);
    let err = bad.parsed_headers().expect_err("invalid").to_string();
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn the_sampler_ratio_must_be_a_fraction() {
    // Refused as it is read, whatever the sampler.
    let refused = Cli::try_parse_from([
        "keybust",
        "--otel-traces-sampler",
        "traceidratio",
        "--otel-traces-sampler-arg",
        "1.5",
    ]);
    assert!(refused.is_err());
    // And by the sampler, for arguments made without the parser.
    let mut args = parse(&["--otel-traces-sampler", "traceidratio"]);
    args.sampler_arg = Some(1.5);
    assert!(args.sampler().is_err());
    let args = parse(&[
        "--otel-traces-sampler",
        "parentbased_traceidratio",
        "--otel-traces-sampler-arg",
        "0.25",
    ]);
    assert!(matches!(args.sampler(), Ok(Sampler::ParentBased(_))));
}

#[test]
fn a_non_http_endpoint_is_refused() {
    let args = parse(&["--otel-exporter-otlp-endpoint", "ftp://collector"]);
    assert!(matches!(args.pipeline(), Err(TelemetryError::Config(_))));
}
