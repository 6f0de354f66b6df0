//! The benchmark's picture: one horizontal bar per workload, the ratio "how many times better
//! wasmpool is than Python" on a log scale, with the 1x line and each row's target marked.
//!
//! Drawn by hand into an RGB buffer and written with `png`; text comes from the pre-rasterized
//! `noto-sans-mono-bitmap` font, so nothing depends on system fonts or libraries.

use std::path::Path;

use noto_sans_mono_bitmap::{FontWeight, RasterHeight, get_raster, get_raster_width};

/// One row of the chart.
pub struct Bar {
    pub label: String,
    /// Python ÷ wasmpool or wasmpool ÷ Python (higher is better); `None` without a peer.
    pub ratio: Option<f64>,
    /// The target as a ratio, if it is one.
    pub target: Option<f64>,
    /// The target as the table writes it.
    pub target_text: String,
    /// wasmpool's own median, with its unit.
    pub ours: Option<String>,
}

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [25, 25, 25];
const GREY: Rgb = [110, 110, 110];
const GRID: Rgb = [200, 200, 200];
const FAINT: Rgb = [232, 232, 232];
const STRIPE: Rgb = [246, 246, 246];
const MET: Rgb = [46, 160, 67];
const MISSED: Rgb = [214, 69, 65];
const NEUTRAL: Rgb = [66, 133, 244];

const WIDTH: i64 = 1500;
const MARGIN: i64 = 20;
/// Characters per line of a row's label (labels wrap to two lines).
const LABEL_CHARS: usize = 58;
const ROW_H: i64 = 44;
const TOP: i64 = 124;
/// The right-hand column: ratio, target and wasmpool's value in words.
const RIGHT_W: i64 = 270;

#[derive(Clone, Copy)]
struct Font {
    weight: FontWeight,
    height: RasterHeight,
}

const TEXT: Font = Font {
    weight: FontWeight::Regular,
    height: RasterHeight::Size16,
};
const BOLD: Font = Font {
    weight: FontWeight::Bold,
    height: RasterHeight::Size16,
};
const TITLE: Font = Font {
    weight: FontWeight::Bold,
    height: RasterHeight::Size20,
};

struct Canvas {
    w: i64,
    h: i64,
    px: Vec<Rgb>,
}

impl Canvas {
    fn new(w: i64, h: i64) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![WHITE; (w * h) as usize],
        }
    }

    /// Blends `c` at `(x, y)` with coverage `a` (0–255).
    fn blend(&mut self, x: i64, y: i64, c: Rgb, a: u8) {
        if x < 0 || y < 0 || x >= self.w || y >= self.h || a == 0 {
            return;
        }
        let p = &mut self.px[(y * self.w + x) as usize];
        for i in 0..3 {
            let (bg, fg) = (i32::from(p[i]), i32::from(c[i]));
            p[i] = (bg + (fg - bg) * i32::from(a) / 255) as u8;
        }
    }

    /// Fills the rectangle `[x0, x1) × [y0, y1)` (corners in any order).
    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..y0.max(y1) {
            for x in x0.min(x1)..x0.max(x1) {
                self.blend(x, y, c, 255);
            }
        }
    }

    /// Writes `s` with its top-left corner at `(x, y)`; returns the x after it.
    fn text(&mut self, x: i64, y: i64, s: &str, font: Font, c: Rgb) -> i64 {
        let cw = char_width(font);
        let mut x = x;
        for ch in printable(s).chars() {
            let raster = get_raster(ch, font.weight, font.height)
                .or_else(|| get_raster('?', font.weight, font.height));
            if let Some(raster) = raster {
                for (dy, row) in raster.rows().enumerate() {
                    for (dx, &a) in row.iter().enumerate() {
                        self.blend(x + dx as i64, y + dy as i64, c, a);
                    }
                }
            }
            x += cw;
        }
        x
    }

    fn png(&self, path: &Path) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut encoder = png::Encoder::new(file, self.w as u32, self.h as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(self.px.as_flattened())
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    }
}

fn char_width(font: Font) -> i64 {
    get_raster_width(font.weight, font.height) as i64
}

fn text_width(s: &str, font: Font) -> i64 {
    printable(s).chars().count() as i64 * char_width(font)
}

/// The text with the characters the font lacks spelled in ASCII.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '≥' => out.push_str(">="),
            '≤' => out.push_str("<="),
            '→' => out.push_str("->"),
            '–' | '—' => out.push('-'),
            '’' => out.push('\''),
            c => out.push(c),
        }
    }
    out
}

/// Word-wraps `s` into at most two lines of `LABEL_CHARS`.
fn wrap(s: &str) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    for word in printable(s).split(' ') {
        let line = lines.last_mut().expect("a line");
        if line.is_empty() || line.chars().count() + 1 + word.chars().count() <= LABEL_CHARS {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        } else {
            lines.push(word.to_string());
        }
    }
    if lines.len() > 2 {
        let rest = lines.split_off(1).join(" ");
        let cut: String = rest.chars().take(LABEL_CHARS - 3).collect();
        lines.push(format!("{cut}..."));
    }
    lines
}

/// The largest of 1, 2, 5 × 10^k at or below `v`.
fn step_below(v: f64) -> f64 {
    let d = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .into_iter()
        .map(|m| m * d)
        .find(|&s| s <= v * 1.0001)
        .unwrap_or(d)
}

/// The smallest of 1, 2, 5 × 10^k at or above `v`.
fn step_above(v: f64) -> f64 {
    let d = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * d)
        .find(|&s| s >= v * 0.9999)
        .unwrap_or(10.0 * d)
}

/// A ratio as an axis label: "0.02x", "1x", "30x".
fn ratio_label(v: f64) -> String {
    format!("{}x", (v * 1000.0).round() / 1000.0)
}

/// The ratio as a value: "0.4x", "12.4x"; two decimals near 1x, where the colour may hinge
/// on them.
fn ratio_value(v: f64) -> String {
    if v < 0.1 || (0.9..1.1).contains(&v) {
        format!("{v:.2}x")
    } else {
        format!("{v:.1}x")
    }
}

/// Writes the chart of `bars` to `path` as a PNG.
pub fn write_png(path: &Path, subtitle: &str, bars: &[Bar]) -> std::io::Result<()> {
    let n = bars.len() as i64;
    let height = TOP + n * ROW_H + 64;
    let mut c = Canvas::new(WIDTH, height);

    // The axis: 1-2-5 steps around every ratio, target and 1x, clipped to 0.001x–1000x.
    let values = bars
        .iter()
        .flat_map(|b| [b.ratio, b.target])
        .flatten()
        .filter(|v| v.is_finite() && *v > 0.0)
        .chain([1.0]);
    let (min, max) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let lo = step_below((min / 1.3).max(1e-3));
    let hi = step_above((max * 1.3).min(1e3));
    let (lo_exp, hi_exp) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let x0 = MARGIN + LABEL_CHARS as i64 * char_width(TEXT) + 24;
    let x1 = WIDTH - MARGIN - RIGHT_W;
    let x_of = |v: f64| {
        let t = (v.clamp(lo, hi).log10() - lo.log10()) / (hi.log10() - lo.log10());
        x0 + (t * (x1 - x0) as f64).round() as i64
    };
    let (top, bottom) = (TOP, TOP + n * ROW_H);

    // Title, subtitle, legend.
    c.text(
        MARGIN,
        12,
        "wasmpool vs Python multiprocessing: how many times better is wasmpool?",
        TITLE,
        INK,
    );
    c.text(MARGIN, 40, subtitle, TEXT, GREY);
    let ly = 68;
    let mut lx = MARGIN;
    for (colour, what) in [
        (MET, "target met"),
        (MISSED, "target missed"),
        (NEUTRAL, "target is not a ratio"),
    ] {
        c.rect(lx, ly + 3, lx + 22, ly + 13, colour);
        lx = c.text(lx + 28, ly, what, TEXT, INK) + 24;
    }
    c.rect(lx + 9, ly - 2, lx + 12, ly + 18, INK);
    lx = c.text(lx + 20, ly, "the row's target", TEXT, INK) + 24;
    c.rect(lx + 8, ly - 2, lx + 12, ly + 18, GREY);
    c.text(
        lx + 20,
        ly,
        "1x = level with Python; right of it wasmpool is better",
        TEXT,
        INK,
    );

    // Rows' stripes, then the grid over them.
    for i in 0..n {
        if i % 2 == 0 {
            c.rect(0, top + i * ROW_H, WIDTH, top + (i + 1) * ROW_H, STRIPE);
        }
    }
    let decade_px = (x1 - x0) as f64 / (hi.log10() - lo.log10());
    for e in lo_exp..=hi_exp {
        let d = 10f64.powi(e);
        for m in 1..10 {
            let v = d * f64::from(m);
            if v < lo * 0.9999 || v > hi * 1.0001 {
                continue;
            }
            let x = x_of(v);
            let labelled = m == 1 || (decade_px >= 110.0 && (m == 2 || m == 5));
            c.rect(x, top, x + 1, bottom, if m == 1 { GRID } else { FAINT });
            if labelled {
                let s = ratio_label(v);
                let w = text_width(&s, TEXT);
                let font_colour = if m == 1 { INK } else { GREY };
                c.text(x - w / 2, top - 22, &s, TEXT, font_colour);
                c.text(x - w / 2, bottom + 6, &s, TEXT, font_colour);
            }
        }
    }
    c.rect(x0, top, x1, top + 1, GRID);
    c.rect(x0, bottom, x1, bottom + 1, GRID);
    c.rect(x_of(1.0) - 2, top, x_of(1.0) + 2, bottom, GREY);

    for (i, b) in bars.iter().enumerate() {
        let y = top + i as i64 * ROW_H;
        let mid = y + ROW_H / 2;
        // The label, vertically centred.
        let lines = wrap(&b.label);
        let mut ty = mid - 9 * lines.len() as i64;
        for line in &lines {
            c.text(MARGIN, ty, line, TEXT, INK);
            ty += 18;
        }
        // The right-hand column.
        let rx = x1 + 24;
        let Some(ratio) = b.ratio.filter(|r| r.is_finite() && *r > 0.0) else {
            let words = format!(
                "no Python peer: wasmpool {} (target {})",
                b.ours.as_deref().unwrap_or("—"),
                b.target_text
            );
            let w = text_width(&words, TEXT);
            let background = if i.is_multiple_of(2) { STRIPE } else { WHITE };
            c.rect(x0 + 4, mid - 11, x0 + 16 + w, mid + 11, background);
            c.text(x0 + 10, mid - 8, &words, TEXT, GREY);
            continue;
        };
        let colour = match b.target {
            Some(t) if ratio >= t => MET,
            Some(_) => MISSED,
            None => NEUTRAL,
        };
        let after = c.text(rx, mid - 17, &ratio_value(ratio), BOLD, colour);
        c.text(
            after + 8,
            mid - 17,
            &format!("target {}", b.target_text),
            TEXT,
            INK,
        );
        if let Some(ours) = &b.ours {
            c.text(rx, mid + 1, &format!("wasmpool {ours}"), TEXT, GREY);
        }
        // The bar, from 1x to the ratio, and its value at its outer end.
        let (from, to) = (x_of(1.0), x_of(ratio));
        c.rect(from, mid - 10, to + i64::from(to >= from), mid + 10, colour);
        // The target's marker.
        if let Some(t) = b.target.filter(|t| t.is_finite() && *t > 0.0) {
            let tx = x_of(t);
            c.rect(tx - 1, y + 3, tx + 2, y + ROW_H - 3, INK);
        }
        let s = ratio_value(ratio);
        let w = text_width(&s, BOLD);
        let tx = if to >= from { to + 6 } else { to - 6 - w };
        if tx >= x0 && tx + w <= x1 {
            c.text(tx, mid - 8, &s, BOLD, INK);
        }
    }

    c.text(
        MARGIN,
        bottom + 34,
        "Ratio = Python ÷ wasmpool where lower is better (times, memory), \
         wasmpool ÷ Python for rates; the table next to this picture has the values.",
        TEXT,
        GREY,
    );
    c.png(path)
}
