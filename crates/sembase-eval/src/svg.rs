//! Small inline SVG charts for the HTML report: grouped bars and lines. No
//! scripts, no fonts or styles from outside the page.

use std::fmt::Write as _;

/// Series colours (colour-blind-safe palette by Okabe and Ito).
pub(crate) const PALETTE: [&str; 8] =
    ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];

/// Text made safe for HTML and SVG (element content and attribute values).
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One model's values over the categories of a bar chart.
pub(crate) struct Bars {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// One model's points of a line chart.
pub(crate) struct Line {
    pub name: String,
    /// Index into [`PALETTE`], so that a model keeps its colour across charts.
    pub colour: usize,
    pub points: Vec<(f64, f64)>,
}

/// A value axis from `lo` to `hi` with a round step.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// An axis covering `values` (and 0 when `with_zero`), on a 1/2/5 x 10^n step.
    fn covering(values: impl Iterator<Item = f64>, with_zero: bool) -> Axis {
        let (mut lo, mut hi) =
            if with_zero { (0.0f64, 0.0f64) } else { (f64::INFINITY, f64::NEG_INFINITY) };
        for v in values.filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() || !hi.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-9 {
            (lo, hi) = (lo - 0.5, hi + 0.5);
        }
        let raw = (hi - lo) / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * magnitude);
        Axis { lo: (lo / step).floor() * step, hi: (hi / step).ceil() * step, step }
    }

    /// The vertical pixel position of `v` in the plot area.
    fn y(&self, v: f64) -> f64 {
        TOP + PLOT_H - (v - self.lo) / (self.hi - self.lo) * PLOT_H
    }

    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n).map(|i| self.lo + i as f64 * self.step).collect()
    }
}

/// Tick label without needless decimals.
fn tick_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// The legend as one row of swatches under the plot: (name, palette index).
fn legend(out: &mut String, entries: &[(&str, usize)], x: f64, y: f64) {
    let mut cx = x;
    for &(name, colour) in entries {
        let colour = PALETTE[colour % PALETTE.len()];
        let _ = write!(
            out,
            r#"<rect x="{cx:.1}" y="{:.1}" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
            y - 10.0,
            cx + 16.0,
            y,
            escape(name)
        );
        cx += 28.0 + 7.0 * name.chars().count() as f64;
    }
}

const TOP: f64 = 34.0;
const LEFT: f64 = 52.0;
const PLOT_H: f64 = 200.0;
/// Slant of bar chart category labels, in degrees.
const LABEL_ANGLE: f64 = 30.0;
/// Approximate width of one character of 11px text.
const CHAR_W: f64 = 6.2;

/// Opens the `<svg>` and draws what every chart has: the title, horizontal grid
/// lines with their value labels, and the value axis name.
fn frame(
    out: &mut String,
    width: f64,
    height: f64,
    title: &str,
    axis: &Axis,
    plot_w: f64,
    y_label: &str,
) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="{}">"#,
        escape(title)
    );
    let _ = write!(out, r#"<text x="{LEFT}" y="18" class="title">{}</text>"#, escape(title));
    for t in axis.ticks() {
        let y = axis.y(t);
        let _ = write!(
            out,
            r#"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            tick_label(t)
        );
    }
    let _ = write!(
        out,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" class="axis" text-anchor="middle">{}</text>"#,
        TOP + PLOT_H / 2.0,
        escape(y_label)
    );
}

/// Grouped bars: one group per category, one bar per series, value labels on top.
pub(crate) fn bar_chart(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[Bars],
) -> String {
    let bar_w = 22.0f64.min(160.0 / series.len().max(1) as f64).max(8.0);
    let group_w = bar_w * series.len() as f64 + 28.0;
    let plot_w = (group_w * categories.len() as f64).max(300.0);
    let legend_w: f64 = series.iter().map(|s| 28.0 + 7.0 * s.name.chars().count() as f64).sum();
    // Category labels slant down to the right at LABEL_ANGLE degrees.
    let longest = categories.iter().map(|c| c.chars().count()).max().unwrap_or(0) as f64 * CHAR_W;
    let (sin, cos) = LABEL_ANGLE.to_radians().sin_cos();
    let label_h = longest * sin + 24.0;
    let overhang = (longest * cos - plot_w / categories.len().max(1) as f64 / 2.0).max(0.0);
    let width = (LEFT + plot_w + 20.0 + overhang).max(LEFT + legend_w + 20.0);
    let height = TOP + PLOT_H + label_h + 30.0;
    let mut axis =
        Axis::covering(series.iter().flat_map(|s| s.values.iter().flatten().copied()), true);
    // Room above the tallest bar for its value label.
    let top_value = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .filter(|v| v.is_finite())
        .fold(axis.lo, f64::max);
    if top_value > axis.hi - 0.08 * (axis.hi - axis.lo) {
        axis.hi += axis.step;
    }
    let y = |v: f64| axis.y(v);
    let mut out = String::new();
    frame(&mut out, width, height, title, &axis, plot_w, y_label);
    let zero = y(0.0f64.clamp(axis.lo, axis.hi));
    let groups = plot_w / categories.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let gx = LEFT + groups * c as f64 + (groups - bar_w * series.len() as f64) / 2.0;
        for (s, bars) in series.iter().enumerate() {
            let Some(v) = bars.values.get(c).copied().flatten().filter(|v| v.is_finite()) else {
                continue;
            };
            let x = gx + bar_w * s as f64;
            let (top, h) = if v >= 0.0 { (y(v), zero - y(v)) } else { (zero, y(v) - zero) };
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {v:.2}</title></rect>"#,
                bar_w - 2.0,
                h.max(0.5),
                PALETTE[s % PALETTE.len()],
                escape(&format!("{} / {category}", bars.name))
            );
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" class="value" text-anchor="middle">{v:.1}</text>"#,
                x + (bar_w - 2.0) / 2.0,
                top - 3.0
            );
        }
        let cx = LEFT + groups * (c as f64 + 0.5);
        let _ = write!(
            out,
            r#"<text transform="translate({cx:.1} {:.1}) rotate({LABEL_ANGLE})" class="tick" text-anchor="start">{}</text>"#,
            TOP + PLOT_H + 14.0,
            escape(category)
        );
    }
    let _ = write!(
        out,
        r#"<line x1="{LEFT}" x2="{:.1}" y1="{zero:.1}" y2="{zero:.1}" class="axisline"/>"#,
        LEFT + plot_w
    );
    let entries: Vec<(&str, usize)> =
        series.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    legend(&mut out, &entries, LEFT, height - 8.0);
    out.push_str("</svg>");
    out
}

/// Lines with markers; `x_log` puts x on a log scale. `x_ticks` are labelled.
pub(crate) fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
    x_log: bool,
    x_ticks: &[f64],
) -> String {
    let plot_w = 340.0;
    let legend_w: f64 = lines.iter().map(|l| 28.0 + 7.0 * l.name.chars().count() as f64).sum();
    let width = (LEFT + plot_w + 24.0).max(LEFT + legend_w + 20.0);
    let height = TOP + PLOT_H + 70.0;
    let fx = |x: f64| if x_log { x.max(1e-9).ln() } else { x };
    let xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| fx(p.0)))
        .chain(x_ticks.iter().map(|&t| fx(t)))
        .collect();
    let (mut xlo, mut xhi) =
        xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    if !xlo.is_finite() || xhi - xlo < 1e-9 {
        xlo = xlo.min(0.0);
        xhi = xlo + 1.0;
    }
    let axis = Axis::covering(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)), false);
    let px = |x: f64| LEFT + (fx(x) - xlo) / (xhi - xlo) * plot_w;
    let py = |v: f64| axis.y(v);
    let mut out = String::new();
    frame(&mut out, width, height, title, &axis, plot_w, y_label);
    for &t in x_ticks {
        let _ = write!(
            out,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{TOP}" y2="{:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
            px(t),
            px(t),
            TOP + PLOT_H,
            px(t),
            TOP + PLOT_H + 16.0,
            tick_label(t)
        );
    }
    let _ = write!(
        out,
        r#"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" class="axisline"/>"#,
        LEFT + plot_w,
        TOP + PLOT_H,
        TOP + PLOT_H
    );
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        TOP + PLOT_H + 34.0,
        escape(x_label)
    );
    for line in lines {
        let colour = PALETTE[line.colour % PALETTE.len()];
        let points: Vec<String> = line
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, v)| format!("{:.1},{:.1}", px(x), py(v)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for &(x, v) in line.points.iter().filter(|p| p.1.is_finite()) {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{}: {} = {v:.2}</title></circle>"#,
                px(x),
                py(v),
                escape(&line.name),
                tick_label(x)
            );
        }
    }
    let entries: Vec<(&str, usize)> = lines.iter().map(|l| (l.name.as_str(), l.colour)).collect();
    legend(&mut out, &entries, LEFT, height - 8.0);
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_steps_are_round_and_cover_the_data() {
        let a = Axis::covering([12.0, 87.5].into_iter(), true);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 100.0, 20.0));
        let a = Axis::covering([-3.0, 4.0].into_iter(), true);
        assert!(a.lo <= -3.0 && a.hi >= 4.0);
        let a = Axis::covering([80.7, 82.0].into_iter(), false);
        assert!(a.lo >= 80.0 && a.lo <= 80.7 && a.hi >= 82.0 && a.hi <= 82.5, "{} {}", a.lo, a.hi);
    }

    #[test]
    fn names_are_escaped() {
        let svg = bar_chart(
            "t<1>",
            "y",
            &["a&b".into()],
            &[Bars { name: "m\"x".into(), values: vec![Some(50.0)] }],
        );
        assert!(svg.contains("t&lt;1&gt;") && svg.contains("a&amp;b") && svg.contains("m&quot;x"));
        assert!(!svg.contains("<1>"));
    }
}
