//! The report as one self-contained HTML page: the tables, and SVG plots drawn with plotters
//! (upload against each varying parameter with ±1 SD error bars; response classes stacked per
//! value of the class parameter; download per trial coloured by class). Every figure says how
//! many data marks it drew (`data-marks`); a small script records how many the browser laid
//! out (`data-rendered`), which a headless browser test reads back.

use plotters::prelude::*;

use crate::{
    frames::Response,
    report::{Report, Trial},
};

const SIZE: (u32, u32) = (640, 400);
/// Colours of `Response::ALL`: none, after the input, early (the seed paper's blue, orange,
/// green).
const CLASS_COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];

type Plot = Result<String, Box<dyn std::error::Error>>;

/// x range padded by 5% (or ±1 around a single value).
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 1.0 };
    (lo - pad)..(hi + pad)
}

fn upload_plot(param: &str, points: &[crate::report::ParamPoint]) -> Plot {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let xs = padded(points.first().map_or(0.0, |p| p.value), points.last().map_or(1.0, |p| p.value));
        let top = points.iter().map(|p| p.mean + p.sd).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Upload vs {param} (mean ± 1 SD)"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(xs, 0.0..top)?;
        chart.configure_mesh().x_desc(param).y_desc("upload bytes").draw()?;
        chart.draw_series(points.iter().map(|p| ErrorBar::new_vertical(p.value, p.mean - p.sd, p.mean, p.mean + p.sd, BLACK.filled(), 8)))?;
        chart.draw_series(points.iter().map(|p| Circle::new((p.value, p.mean), 4, BLUE.filled())))?;
        root.present()?;
    }
    Ok(svg)
}

fn class_plot(param: &str, report: &Report) -> Plot {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let n = report.classes.len();
        let most = report.classes.iter().map(|c| c.counts.iter().sum::<usize>()).max().unwrap_or(1).max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Response by {param}"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..most as f64 * 1.1)?;
        let labels: Vec<String> = report.classes.iter().map(|c| c.value.to_string()).collect();
        chart
            .configure_mesh()
            .x_desc(param)
            .y_desc("trials")
            .x_labels(n.max(1))
            .x_label_formatter(&|x| labels.get(x.round() as usize).filter(|_| (x - x.round()).abs() < 1e-6).cloned().unwrap_or_default())
            .draw()?;
        for (k, colour) in CLASS_COLOURS.iter().enumerate() {
            chart
                .draw_series(report.classes.iter().enumerate().filter(|(_, c)| c.counts[k] > 0).map(|(i, c)| {
                    let below: usize = c.counts[..k].iter().sum();
                    let x = i as f64;
                    Rectangle::new([(x - 0.35, below as f64), (x + 0.35, (below + c.counts[k]) as f64)], colour.filled())
                }))?
                .label(Response::ALL[k].name())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
        root.present()?;
    }
    Ok(svg)
}

fn download_plot(param: &str, trials: &[Trial]) -> Plot {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let lo = trials.iter().map(|t| t.value).fold(f64::MAX, f64::min);
        let hi = trials.iter().map(|t| t.value).fold(f64::MIN, f64::max);
        let top = trials.iter().map(|t| t.download_bytes as f64).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Download per trial vs {param}"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(padded(lo, hi), 0.0..top)?;
        chart.configure_mesh().x_desc(param).y_desc("download bytes").draw()?;
        for (k, colour) in CLASS_COLOURS.iter().enumerate() {
            let class = Response::ALL[k];
            chart
                .draw_series(trials.iter().filter(|t| t.response == class).map(|t| Circle::new((t.value, t.download_bytes as f64), 4, colour.filled())))?
                .label(class.name())
                .legend(move |(x, y)| Circle::new((x + 5, y), 4, colour.filled()));
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
        root.present()?;
    }
    Ok(svg)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Records, per figure, the SVG shapes the browser laid out with a non-empty box.
const RENDER_CHECK: &str = r#"<script>
window.addEventListener('load', () => {
  for (const fig of document.querySelectorAll('figure')) {
    let n = 0;
    for (const e of fig.querySelectorAll('svg circle, svg rect, svg line, svg polyline, svg path')) {
      const b = e.getBBox();
      if (b.width > 0 || b.height > 0) n++;
    }
    fig.dataset.rendered = n;
  }
});
</script>"#;

/// The whole report as HTML.
pub fn html(report: &Report, title: &str) -> Result<String, String> {
    let mut figures: Vec<(String, usize, String)> = Vec::new();
    let err = |e: Box<dyn std::error::Error>| format!("drawing a plot: {e}");
    for (param, points) in &report.upload_by_param {
        // A point and an error bar per arm.
        figures.push((format!("upload-{param}"), 2 * points.len(), upload_plot(param, points).map_err(err)?));
    }
    if let Some(param) = &report.class_param {
        let bars = report.classes.iter().map(|c| c.counts.iter().filter(|&&n| n > 0).count()).sum();
        figures.push(("responses".into(), bars, class_plot(param, report).map_err(err)?));
        figures.push(("downloads".into(), report.trials.len(), download_plot(param, &report.trials).map_err(err)?));
    }
    let mut out = format!("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}figure{{display:inline-block;margin:1em}}</style>\n{RENDER_CHECK}\n</head><body>\n<h1>{0}</h1>\n", escape(title));
    out += &format!("<p>{} frames. Upload: app-data bytes to the frame's top destination; outliers dropped by the 1.5·IQR rule; p: Welch's t-test against the first arm.</p>\n", report.frames);
    out += "<table id=\"arms\"><tr><th>arm</th><th>parameters</th><th>n</th><th>kept</th><th>mean</th><th>SD</th><th>median</th><th>p</th><th>none</th><th>after input</th><th>early</th><th>mean download</th></tr>\n";
    for a in &report.arms {
        let params: Vec<String> = a.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let p = a.welch_vs_first.map_or("-".to_string(), |w| format!("{:.4}", w.p));
        out += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{p}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr>\n",
            escape(&a.arm),
            escape(&params.join(" ")),
            a.n,
            a.kept,
            a.mean,
            a.sd,
            a.median,
            a.responses[0],
            a.responses[1],
            a.responses[2],
            a.mean_download_bytes
        );
    }
    out += "</table>\n";
    for (id, marks, svg) in figures {
        out += &format!("<figure id=\"{id}\" data-marks=\"{marks}\">{svg}</figure>\n");
    }
    out += "</body></html>\n";
    Ok(out)
}
