//! Plots of a metric against training tokens, one line per method (mean over seeds), as PNG and
//! SVG with plotters.
//!
//! Labels need a TrueType font: the one given, else the first of the usual system fonts found
//! (DejaVu Sans, Liberation Sans, Arial). Without one the plots are still drawn, lines and
//! frame only, and [`PlotOutcome::labelled`] says so.

use crate::error::{ReproError, Result};
use crate::metrics::{LogPoint, RunLog};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One line: a name and its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(tokens, value)` pairs.
    pub points: Vec<(f64, f64)>,
}

/// What a metric plot shows.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// File stem, e.g. `"val_loss"`.
    pub file: &'static str,
    /// Title.
    pub title: &'static str,
    /// Y-axis label.
    pub y_label: &'static str,
    /// Plot the y axis on a log scale.
    pub log_y: bool,
    /// The value of a logged point.
    pub value: fn(&LogPoint) -> f64,
}

/// The metrics plotted: validation loss, MaxVio, PES and routing consistency (for models with
/// several MoE layers, the layers' means).
pub const METRICS: [Metric; 4] = [
    Metric {
        file: "val_loss",
        title: "Validation loss",
        y_label: "validation loss (log scale)",
        log_y: true,
        value: |p| p.val_loss,
    },
    Metric {
        file: "max_vio",
        title: "MaxVio on the validation sample",
        y_label: "MaxVio",
        log_y: false,
        value: |p| p.max_vio,
    },
    Metric {
        file: "pes",
        title: "Pairwise expert similarity (PES)",
        y_label: "PES",
        log_y: false,
        value: |p| p.pes,
    },
    Metric {
        file: "consistency",
        title: "Routing consistency",
        y_label: "routing consistency",
        log_y: false,
        value: |p| p.consistency.unwrap_or(f64::NAN),
    },
];

/// Files written and whether they carry text.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotOutcome {
    /// Paths of the plots.
    pub files: Vec<PathBuf>,
    /// Whether a font was found (titles, axes and legend drawn).
    pub labelled: bool,
}

const SYSTEM_FONTS: [&str; 9] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

static FONT: OnceLock<bool> = OnceLock::new();

/// Registers a font for plotters once per process; returns whether one is available.
fn ensure_font(font: Option<&Path>) -> bool {
    *FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = font.map(Path::to_path_buf).into_iter().collect();
        candidates.extend(SYSTEM_FONTS.iter().map(PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // Registered fonts live as long as the process (plotters needs 'static).
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Line colour of the `i`-th series.
fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(110, 110, 110),
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(23, 190, 207),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(140, 86, 75),
    ];
    C[i % C.len()]
}

/// A method keeps its colour whichever methods are plotted.
fn series_color(s: &Series, position: usize) -> usize {
    crate::methods::Method::ALL
        .iter()
        .position(|m| m.name() == s.name)
        .unwrap_or(position)
}

/// One series per method (runs grouped by method name in order of first appearance), each the
/// mean over that method's runs at each logged point.
pub fn mean_series(runs: &[RunLog], value: fn(&LogPoint) -> f64) -> Vec<Series> {
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        if !names.contains(&r.method.as_str()) {
            names.push(&r.method);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mine: Vec<&RunLog> = runs.iter().filter(|r| r.method == name).collect();
            let len = mine.iter().map(|r| r.points.len()).min().unwrap_or(0);
            let points = (0..len)
                .map(|i| {
                    let x = mine[0].points[i].tokens as f64;
                    let y =
                        mine.iter().map(|r| value(&r.points[i])).sum::<f64>() / mine.len() as f64;
                    (x, y)
                })
                .collect();
            Series {
                name: name.to_string(),
                points,
            }
        })
        .collect()
}

fn bounds(series: &[Series], log_y: bool) -> ((f64, f64), (f64, f64)) {
    let ys = series.iter().flat_map(|s| s.points.iter()).map(|&(_, y)| y);
    let ys: Vec<f64> = ys
        .filter(|y| y.is_finite() && (!log_y || *y > 0.0))
        .map(|y| if log_y { y.log10() } else { y })
        .collect();
    let xs = series.iter().flat_map(|s| s.points.iter()).map(|&(x, _)| x);
    let xmax = xs.fold(0.0f64, f64::max).max(1.0);
    let (mut lo, mut hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if !log_y {
        lo = lo.min(0.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    ((0.0, xmax), (lo - if log_y { pad } else { 0.0 }, hi + pad))
}

fn transform(y: f64, log_y: bool) -> Option<f64> {
    if !y.is_finite() {
        return None;
    }
    if log_y {
        (y > 0.0).then(|| y.log10())
    } else {
        Some(y)
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    m: &Metric,
    series: &[Series],
    labelled: bool,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let ((x0, x1), (y0, y1)) = bounds(series, m.log_y);
    if labelled {
        let log_y = m.log_y;
        let mut chart = ChartBuilder::on(root)
            .caption(m.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("training tokens")
            .y_desc(m.y_label)
            .x_label_formatter(&|x| format!("{:.0}k", x / 1e3))
            .y_label_formatter(&|y| {
                if log_y {
                    format!("{:.3}", 10f64.powf(*y))
                } else {
                    format!("{y:.3}")
                }
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in series.iter().enumerate() {
            let c = color(series_color(s, i));
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter_map(|&(x, y)| transform(y, log_y).map(|y| (x, y)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
    } else {
        // No font: frame and lines in pixel coordinates, no text at all.
        let (w, h) = root.dim_in_pixel();
        let (w, h) = (w as i32, h as i32);
        let (l, r, t, b) = (40, w - 20, 20, h - 40);
        root.draw(&Rectangle::new([(l, t), (r, b)], BLACK.stroke_width(1)))
            .map_err(|e| e.to_string())?;
        let px = |x: f64| l + ((x - x0) / (x1 - x0) * (r - l) as f64) as i32;
        let py = |y: f64| b - ((y - y0) / (y1 - y0) * (b - t) as f64) as i32;
        for (i, s) in series.iter().enumerate() {
            let pts: Vec<(i32, i32)> = s
                .points
                .iter()
                .filter_map(|&(x, y)| transform(y, m.log_y).map(|y| (px(x), py(y))))
                .collect();
            root.draw(&PathElement::new(
                pts,
                color(series_color(s, i)).stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

/// Draws every metric of [`METRICS`] for `runs` into `dir` as `<metric>.png` and `<metric>.svg`.
pub fn plot_all(runs: &[RunLog], dir: &Path, font: Option<&Path>) -> Result<PlotOutcome> {
    let labelled = ensure_font(font);
    let mut files = Vec::new();
    for m in &METRICS {
        let series = mean_series(runs, m.value);
        let png = dir.join(format!("{}.png", m.file));
        {
            let root = BitMapBackend::new(&png, (960, 600)).into_drawing_area();
            draw(&root, m, &series, labelled)
                .map_err(|e| ReproError::Plot(format!("{}: {e}", png.display())))?;
        }
        files.push(png);
        let svg = dir.join(format!("{}.svg", m.file));
        {
            let root = SVGBackend::new(&svg, (960, 600)).into_drawing_area();
            draw(&root, m, &series, labelled)
                .map_err(|e| ReproError::Plot(format!("{}: {e}", svg.display())))?;
        }
        files.push(svg);
    }
    Ok(PlotOutcome { files, labelled })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str, seed: u64, vals: &[f64]) -> RunLog {
        let points = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| LogPoint {
                step: i,
                tokens: i * 100,
                val_loss: v,
                max_vio: 0.1,
                load_entropy: 1.0,
                seu: 0.5,
                pes: 0.2,
                routing_entropy: 1.0,
                ..LogPoint::default()
            })
            .collect();
        RunLog {
            method: method.into(),
            seed,
            init: "gaussian".into(),
            backend: "test".into(),
            points,
            wall_secs: 0.0,
        }
    }

    #[test]
    fn series_are_per_method_means_over_seeds() {
        let runs = [
            run("switch", 0, &[1.0, 0.5]),
            run("switch", 1, &[3.0, 0.7]),
            run("simbal", 0, &[2.0, 0.1]),
        ];
        let s = mean_series(&runs, |p| p.val_loss);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "switch");
        assert_eq!(s[0].points, vec![(0.0, 2.0), (100.0, 0.6)]);
        assert_eq!(s[1].points, vec![(0.0, 2.0), (100.0, 0.1)]);
    }

    #[test]
    fn plots_without_a_font_are_still_drawn() {
        let runs = [
            run("switch", 0, &[1.0, 0.5, 0.4]),
            run("simbal", 0, &[1.0, 0.45, 0.3]),
        ];
        let series = mean_series(&runs, |p| p.val_loss);
        let dir = std::env::temp_dir().join(format!("simbal-repro-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (png, svg) = (dir.join("a.png"), dir.join("a.svg"));
        {
            let root = BitMapBackend::new(&png, (320, 200)).into_drawing_area();
            draw(&root, &METRICS[0], &series, false).unwrap();
        }
        {
            let root = SVGBackend::new(&svg, (320, 200)).into_drawing_area();
            draw(&root, &METRICS[0], &series, false).unwrap();
        }
        let svg_text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            svg_text.contains("<polyline") || svg_text.contains("<path"),
            "{svg_text}"
        );
        assert!(!svg_text.contains("<text"));
        assert!(std::fs::metadata(&png).unwrap().len() > 100);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
