//! The two text formats a scraper may ask `/metrics` for.
//!
//! prometheus-client writes OpenMetrics, which Prometheus asks for first.
//! The classic text format (0.0.4) is what `promtool check metrics`, curl
//! and older scrapers read. For keybust's metrics the two differ in two
//! ways only: a counter's family is named with its `_total` in the classic
//! format (`# TYPE x_total counter`, not `# TYPE x counter`), and there is
//! no closing `# EOF`. Read as the other, each is subtly wrong (promtool
//! reports every counter as having no help text), so the format follows
//! the request's `Accept`, as the Go client's handler does.

use std::collections::HashSet;

/// Which exposition format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Text,
}

impl Format {
    /// OpenMetrics when the scraper's `Accept` names it (as Prometheus's
    /// does), else the classic text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// `openmetrics`, as prometheus-client writes it, in the classic text
/// format: counter families take their samples' `_total`, and `# EOF` and
/// `# UNIT` lines go.
pub(super) fn to_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + counters.len() * 12);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                text.push_str(prefix);
                text.push_str(name);
                if counters.contains(name) {
                    text.push_str("_total");
                }
                if !tail.is_empty() {
                    text.push(' ');
                    text.push_str(tail);
                }
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_and_the_end_goes() {
        let openmetrics = "# HELP a_b Things done.\n# TYPE a_b counter\na_b_total{x=\"y\"} 1\n\
                           # HELP g A gauge.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            to_text(openmetrics),
            "# HELP a_b_total Things done.\n# TYPE a_b_total counter\na_b_total{x=\"y\"} 1\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 2\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_curl_the_text_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
    }
}
