//! Process-wide counters rendered as Prometheus text for `/metrics` (CONTRACT §8): requests by
//! route and status, a latency histogram, upstream calls by endpoint and errcode, credential
//! refreshes. Labels are route *patterns*, never raw paths, so their number stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency_counts: [u64; BUCKETS.len()],
    latency_sum: f64,
    latency_total: u64,
    upstream: BTreeMap<(String, i64), u64>,
    refreshes: BTreeMap<(String, &'static str), u64>,
    gateway: BTreeMap<(&'static str, &'static str, i64), u64>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Requests the upstream pool (`http::upstream`) was full for, answered busy by a worker
    /// (exposed under the lane's old name, which dashboards know).
    upstream_full: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.requests.entry((route, status)).or_default() += 1;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            m.latency_counts[i] += 1;
        }
        m.latency_sum += secs;
        m.latency_total += 1;
    }

    /// One request the HTTP layer refused before routing (tiny_http's `Limits::on_refusal`:
    /// framing, head caps, body limit and budget, timeouts), counted as route `refused` by
    /// status, outside the latency histogram (no handler ran).
    pub fn refused(&self, status: u16) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.requests.entry(("refused", status)).or_default() += 1;
    }

    /// One request the upstream pool had no room for (its worker answered it busy).
    pub fn upstream_full(&self) {
        self.upstream_full.fetch_add(1, Ordering::Relaxed);
    }

    /// One upstream call; `errcode` 0 for success, -2 for a transport failure or garbage.
    pub fn upstream(&self, path: &str, errcode: i64) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.upstream.entry((path.to_string(), errcode)).or_default() += 1;
    }

    /// One credential refresh of a kind (`access_token`, `jsapi_ticket`, ...), `ok` or `error`.
    pub fn refresh(&self, kind: &str, outcome: &'static str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.refreshes.entry((kind.to_string(), outcome)).or_default() += 1;
    }

    /// One gateway call (`gateway::Gateway`): target kind, API family (a fixed set, else
    /// `other`), WeChat's errcode (0 success, -2 transport failure or an error page).
    pub fn gateway_call(&self, target: &'static str, api: &'static str, errcode: i64) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.gateway.entry((target, api, errcode)).or_default() += 1;
    }

    pub fn render(&self, live_sessions: Option<i64>) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(4096);
        out.push_str("# TYPE wafer_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "wafer_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# TYPE wafer_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(m.latency_counts.iter()) {
            cumulative += n;
            let _ = writeln!(
                out,
                "wafer_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "wafer_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            m.latency_total
        );
        let _ = writeln!(out, "wafer_request_duration_seconds_sum {}", m.latency_sum);
        let _ = writeln!(
            out,
            "wafer_request_duration_seconds_count {}",
            m.latency_total
        );
        out.push_str("# TYPE wafer_upstream_calls_total counter\n");
        for ((path, errcode), n) in &m.upstream {
            let _ = writeln!(
                out,
                "wafer_upstream_calls_total{{endpoint=\"{path}\",errcode=\"{errcode}\"}} {n}"
            );
        }
        out.push_str("# TYPE wafer_token_refreshes_total counter\n");
        for ((kind, outcome), n) in &m.refreshes {
            let _ = writeln!(
                out,
                "wafer_token_refreshes_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# TYPE wafer_gateway_calls_total counter\n");
        for ((target, api, errcode), n) in &m.gateway {
            let _ = writeln!(
                out,
                "wafer_gateway_calls_total{{target=\"{target}\",api=\"{api}\",errcode=\"{errcode}\"}} {n}"
            );
        }
        out.push_str("# TYPE wafer_lane_full_total counter\n");
        let _ = writeln!(
            out,
            "wafer_lane_full_total {}",
            self.upstream_full.load(Ordering::Relaxed)
        );
        if let Some(n) = live_sessions {
            out.push_str("# TYPE wafer_live_sessions gauge\n");
            let _ = writeln!(out, "wafer_live_sessions {n}");
        }
        out
    }
}
