//! The latency-over-time plot, written by hand as SVG: per-second p50 / p99 / max for every phase
//! on one time axis (log latency axis), phases shaded and labelled.

use std::fmt::Write as _;

use crate::report::{Report, fmt_us};

const W: f64 = 1000.0;
const H: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 100.0;

const SERIES: [(&str, &str); 3] = [("p50", "#1f77b4"), ("p99", "#ff7f0e"), ("max", "#d62728")];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" step for about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// The SVG document for `r`.
pub fn render(r: &Report) -> String {
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let t_end = r
        .phases
        .iter()
        .map(|p| p.offset_s + p.elapsed_s.max(p.series.len() as f64))
        .fold(1.0, f64::max);
    // Latency range in µs, whole decades, from what is plotted.
    let values = r.phases.iter().flat_map(|p| {
        p.series
            .iter()
            .filter(|s| s.answers > 0)
            .flat_map(|s| [s.p50_us, s.p99_us, s.max_us])
    });
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| {
        (lo.min(v.max(0.1)), hi.max(v))
    });
    let (lo_dec, hi_dec) = if hi <= 0.0 {
        (0.0, 3.0)
    } else {
        let l = lo.log10().floor();
        (l, hi.log10().ceil().max(l + 1.0))
    };
    let x = |t: f64| LEFT + t / t_end * plot_w;
    let y = |us: f64| {
        let v = us.max(10f64.powf(lo_dec)).log10();
        TOP + plot_h - (v - lo_dec) / (hi_dec - lo_dec) * plot_h
    };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let title = format!(
        "navis-auth-load: client-side latency per second{}{}",
        r.settings
            .scenario
            .as_ref()
            .map(|n| format!(" — scenario {n}"))
            .unwrap_or_default(),
        if r.passed { "" } else { " — FAILED" }
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        W / 2.0,
        esc(&title)
    );

    // Phase bands and labels.
    for (i, p) in r.phases.iter().enumerate() {
        let (x0, x1) = (x(p.offset_s), x(p.offset_s + p.elapsed_s));
        let fill = if i % 2 == 0 { "#eef2f7" } else { "#f8f9fb" };
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="{fill}"/>"#,
            (x1 - x0).max(0.5)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#555" transform="rotate(-90 {:.1} {:.1})" text-anchor="end">{} {}</text>"##,
            x0 + 11.0,
            TOP + 4.0,
            x0 + 11.0,
            TOP + 4.0,
            esc(p.target.name()),
            esc(&p.phase)
        );
    }

    // Latency grid (decades) and labels.
    let mut d = lo_dec;
    while d <= hi_dec + 1e-9 {
        let us = 10f64.powf(d);
        let yy = y(us);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ccc"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            yy + 4.0,
            fmt_us(us)
        );
        d += 1.0;
    }
    // Time ticks.
    let step = nice_step(t_end, 12.0);
    let mut t = 0.0;
    while t <= t_end + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/>"##,
            TOP + plot_h,
            TOP + plot_h + 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t}</text>"#,
            TOP + plot_h + 18.0
        );
        t += step;
    }
    // Axes and their labels.
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the first phase started (s)</text>"#,
        LEFT + plot_w / 2.0,
        TOP + plot_h + 38.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (log scale)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // The lines: one polyline per phase and series, one point per second with answers.
    for (name, colour) in SERIES {
        for p in &r.phases {
            let pts: Vec<String> = p
                .series
                .iter()
                .filter(|sec| sec.answers > 0)
                .map(|sec| {
                    let v = match name {
                        "p50" => sec.p50_us,
                        "p99" => sec.p99_us,
                        _ => sec.max_us,
                    };
                    let t = (p.offset_s + sec.second as f64 + 0.5).min(p.offset_s + p.elapsed_s);
                    format!("{:.1},{:.1}", x(t), y(v))
                })
                .collect();
            if pts.len() == 1 {
                let (px, py) = pts[0].split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    s,
                    r#"<circle cx="{px}" cy="{py}" r="2.5" fill="{colour}"/>"#
                );
            } else if !pts.is_empty() {
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8"/>"#,
                    pts.join(" ")
                );
            }
        }
    }

    // Legend.
    let ly = H - 30.0;
    for (i, (name, colour)) in SERIES.iter().enumerate() {
        let lx = LEFT + i as f64 * 110.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{colour}" stroke-width="3"/>"#,
            lx + 24.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{name}</text>"#,
            lx + 30.0,
            ly + 4.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" fill="#555">per second · open loop: from the intended send time · seed {} · {}</text>"##,
        LEFT + 340.0,
        ly + 4.0,
        r.settings.seed,
        esc(&r.settings.target)
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(30.0, 12.0), 5.0);
        assert_eq!(nice_step(10.0, 12.0), 1.0);
        assert_eq!(nice_step(100.0, 12.0), 10.0);
        assert_eq!(esc("a<b&\"c\">"), "a&lt;b&amp;&quot;c&quot;&gt;");
    }
}
