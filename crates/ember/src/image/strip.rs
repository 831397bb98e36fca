//! Step strips: one PNG showing the latent after every denoising step, like the `*.steps.gravity.png`
//! images of InvokeAI's img2img documentation.
//!
//! Layout (measured from `000032.steps.gravity.png`, `000030.steps.gravity.png` and `000019.steps.png` in
//! `shared/testdata/invokeai-img2img/`: every row and column that is pure white, found with numpy):
//!
//! - one slot per step of the *schedule*, each slot the cell plus a white border of 1 px left and right and
//!   2 px above and below — for 48×48 cells (a 384×384 image) a 50×52 slot, so 10 slots make a 500×52 strip
//!   with the cells at x = 50·slot + 1, y = 2 (ImageMagick `montage -geometry +1+2` tiles);
//! - background pure white (255, 255, 255), also in the slots of skipped steps;
//! - cells are the fast 4×3-matrix previews of [`super::preview::latents_to_rgb`], at latent size;
//! - cells are right-aligned: img2img skips the first `schedule − taken` steps, whose slots stay blank on
//!   the left, so the strips of one `-s` at different strengths line up step for step.
//!
//! InvokeAI's cells show the latent *before* each step (its first cell is the noised init image); Ember's
//! show it *after* each step, so the last cell is the latent that is decoded into the image.

use super::preview::latents_to_rgb;
use crate::{Error, Result};
use candle_core::Tensor;
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};

/// White border around each cell, in pixels: (left and right, top and bottom).
pub const SLOT_PAD: (u32, u32) = (1, 2);
/// Slot background (and blank slot) colour.
pub const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);

/// Collects one preview per denoising step and lays them out as a strip.
#[derive(Debug, Clone)]
pub struct StepStrip {
    schedule_steps: usize,
    /// Steps the run will take, when known: cells then start at their true slot even if the run stops early.
    taken_steps: Option<usize>,
    cells: Vec<RgbImage>,
}

impl StepStrip {
    /// A strip with one slot per step of a `schedule_steps`-long schedule; the pushed cells fill the
    /// rightmost slots.
    pub fn new(schedule_steps: usize) -> Self {
        Self {
            schedule_steps,
            taken_steps: None,
            cells: Vec::new(),
        }
    }

    /// A strip for a run that announced `total_steps` of `schedule_steps` (the pipeline's `Event::Started`):
    /// step k goes to slot `schedule_steps − total_steps + k − 1`, so a cancelled run leaves the slots of the
    /// steps it never took blank on the right.
    pub fn for_run(total_steps: usize, schedule_steps: usize) -> Self {
        Self {
            schedule_steps,
            taken_steps: Some(total_steps.min(schedule_steps)),
            cells: Vec::new(),
        }
    }

    /// Number of slots (schedule steps).
    pub fn schedule_steps(&self) -> usize {
        self.schedule_steps
    }

    /// Number of cells pushed so far.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Adds the preview of one step's latents (`[1, 4, h/8, w/8]`).
    pub fn push(&mut self, latents: &Tensor) -> Result<()> {
        let cell = latents_to_rgb(latents)?;
        self.push_image(cell)
    }

    /// Adds an already-rendered cell. Cells take the first cell's size: a hires-fix run's second pass has
    /// larger latents than its first, and its previews are scaled down (bilinear) to fit the same slots.
    pub fn push_image(&mut self, cell: RgbImage) -> Result<()> {
        let limit = self.taken_steps.unwrap_or(self.schedule_steps);
        if self.cells.len() >= limit {
            return Err(Error::invalid(
                "step strip",
                format!("more steps than the {limit} the strip was made for"),
            ));
        }
        let cell = match self.cells.first().map(|first| first.dimensions()) {
            Some((w, h)) if (w, h) != cell.dimensions() => {
                image::imageops::resize(&cell, w, h, image::imageops::FilterType::Triangle)
            }
            _ => cell,
        };
        self.cells.push(cell);
        Ok(())
    }

    /// Cell size (width, height); (0, 0) before the first push.
    pub fn cell_size(&self) -> (u32, u32) {
        self.cells.first().map(|c| c.dimensions()).unwrap_or((0, 0))
    }

    /// Slot size: the cell plus its white border.
    pub fn slot_size(&self) -> (u32, u32) {
        let (w, h) = self.cell_size();
        (w + 2 * SLOT_PAD.0, h + 2 * SLOT_PAD.1)
    }

    /// The schedule slot (0-based) of the i-th pushed cell.
    pub fn slot_of(&self, cell: usize) -> usize {
        let taken = self.taken_steps.unwrap_or(self.cells.len());
        self.schedule_steps - taken + cell
    }

    /// The strip as one row of `schedule_steps` slots (InvokeAI's layout).
    pub fn render(&self) -> RgbImage {
        self.render_wrapped(self.schedule_steps.max(1))
    }

    /// The strip in rows of at most `slots_per_row` slots, wrapped from the right end: the last row holds
    /// the last `slots_per_row` schedule steps and only the first row may be short (blank on its left), so
    /// strips of different lengths still line up on their final steps.
    pub fn render_wrapped(&self, slots_per_row: usize) -> RgbImage {
        let per_row = slots_per_row.max(1);
        let (slot_w, slot_h) = self.slot_size();
        let columns = self.schedule_steps.min(per_row);
        let rows = self.schedule_steps.div_ceil(per_row);
        let mut out = RgbImage::from_pixel(slot_w * columns as u32, slot_h * rows as u32, BACKGROUND);
        for (i, cell) in self.cells.iter().enumerate() {
            let (x, y) = slot_position(self.slot_of(i), self.schedule_steps, per_row);
            let left = (x as u32) * slot_w + SLOT_PAD.0;
            let top = (y as u32) * slot_h + SLOT_PAD.1;
            image::imageops::replace(&mut out, cell, i64::from(left), i64::from(top));
        }
        out
    }
}

/// (column, row) of schedule slot `slot` when `slots` slots are wrapped from the right end into rows of
/// `per_row`.
pub fn slot_position(slot: usize, slots: usize, per_row: usize) -> (usize, usize) {
    let per_row = per_row.max(1);
    let columns = slots.min(per_row);
    let rows = slots.div_ceil(per_row);
    let from_end = slots - 1 - slot;
    (columns - 1 - from_end % per_row, rows - 1 - from_end / per_row)
}

/// Where the strip of an output image goes: `000042.1592514025.png` → `000042.1592514025.strip.png`.
pub fn strip_path(image_path: &Path) -> PathBuf {
    let stem = image_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    image_path.with_file_name(format!("{stem}.strip.png"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// A 48×48 latent of constant value `v` in channel 0: its preview is a flat, never-white colour.
    fn latent(v: f32) -> Tensor {
        let zeros = Tensor::zeros((1, 3, 48, 48), DType::F32, &Device::Cpu).expect("zeros");
        let first = Tensor::full(v, (1, 1, 48, 48), &Device::Cpu).expect("full");
        Tensor::cat(&[&first, &zeros], 1).expect("cat")
    }

    /// Which columns / rows of an image are entirely background white.
    fn white_lines(img: &RgbImage) -> (Vec<bool>, Vec<bool>) {
        let white = |x, y| *img.get_pixel(x, y) == BACKGROUND;
        let cols = (0..img.width())
            .map(|x| (0..img.height()).all(|y| white(x, y)))
            .collect();
        let rows = (0..img.height())
            .map(|y| (0..img.width()).all(|x| white(x, y)))
            .collect();
        (cols, rows)
    }

    fn strip_of(cells: usize, schedule: usize) -> StepStrip {
        let mut strip = StepStrip::new(schedule);
        for k in 0..cells {
            strip.push(&latent(-0.5 + 0.1 * k as f32)).expect("push");
        }
        strip
    }

    /// Geometry of InvokeAI's strips, read from the PNGs (numpy: runs of non-white columns and rows):
    /// 000032 (strength 0.7, -s10): 500×52, cells at x = 151..198, 201..248, …, 451..498, y = 2..49;
    /// 000030 (0.4): x = 301..348, …, 451..498; 000019 (txt2img -s10): x = 1..48, …, 451..498.
    #[test]
    fn matches_invokeai_strip_geometry() {
        for (cells, first_x) in [(7u32, 151u32), (4, 301), (10, 1)] {
            let img = strip_of(cells as usize, 10).render();
            assert_eq!(img.dimensions(), (500, 52));
            let (cols, rows) = white_lines(&img);
            for x in 0..500u32 {
                let in_cell = x >= first_x && (x - 1) % 50 < 48;
                assert_eq!(!cols[x as usize], in_cell, "{cells} cells, column {x}");
            }
            let cell_rows: Vec<usize> = (0..52).filter(|&y| !rows[y]).collect();
            assert_eq!(cell_rows, (2..50).collect::<Vec<_>>());
        }
    }

    /// The same comparison straight against the reference files (shared test data: a missing file is a failure).
    #[test]
    fn white_lines_equal_the_reference_pngs() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata/invokeai-img2img");
        for (file, cells) in [
            ("000032.steps.gravity.png", 7),
            ("000030.steps.gravity.png", 4),
            ("000019.steps.png", 10),
        ] {
            let path = Path::new(dir).join(file);
            let reference = image::open(&path)
                .unwrap_or_else(|e| panic!("shared test data: cannot read {}: {e}", path.display()))
                .to_rgb8();
            let ours = strip_of(cells, 10).render();
            assert_eq!(ours.dimensions(), reference.dimensions(), "{file}");
            assert_eq!(white_lines(&ours), white_lines(&reference), "{file}");
        }
    }

    #[test]
    fn cells_are_the_previews_in_step_order() {
        let strip = strip_of(3, 5);
        let img = strip.render();
        for k in 0..3u32 {
            let preview = latents_to_rgb(&latent(-0.5 + 0.1 * k as f32)).expect("preview");
            let left = (2 + k) * 50 + 1;
            assert_eq!(img.get_pixel(left, 2), preview.get_pixel(0, 0), "cell {k}");
            assert_eq!(img.get_pixel(left + 47, 49), preview.get_pixel(47, 47), "cell {k}");
        }
        // The slot of a skipped step is blank.
        assert_eq!(*img.get_pixel(75, 25), BACKGROUND);
    }

    #[test]
    fn a_cancelled_run_keeps_its_cells_in_their_slots() {
        let mut strip = StepStrip::for_run(7, 10);
        strip.push(&latent(0.3)).expect("push");
        assert_eq!(strip.slot_of(0), 3);
        let img = strip.render();
        assert_ne!(*img.get_pixel(151, 2), BACKGROUND);
        assert_eq!(*img.get_pixel(201, 2), BACKGROUND);
        for _ in 1..7 {
            strip.push(&latent(0.3)).expect("push");
        }
        assert!(strip.push(&latent(0.3)).is_err(), "an 8th step of 7");
    }

    #[test]
    fn wrapping_keeps_the_last_steps_on_the_last_row() {
        // 25 slots in rows of 10: rows of 5, 10, 10, right-aligned.
        assert_eq!(slot_position(24, 25, 10), (9, 2));
        assert_eq!(slot_position(15, 25, 10), (0, 2));
        assert_eq!(slot_position(5, 25, 10), (0, 1));
        assert_eq!(slot_position(4, 25, 10), (9, 0));
        assert_eq!(slot_position(0, 25, 10), (5, 0));
        let img = strip_of(10, 25).render_wrapped(10);
        assert_eq!(img.dimensions(), (500, 3 * 52));
        // The 10 cells fill exactly the last row.
        let (cols, rows) = white_lines(&img);
        assert!(rows[..106].iter().all(|&w| w));
        assert!(!rows[106]);
        assert!(!cols[1] && !cols[498]);
        // A short schedule is not padded to the row length.
        assert_eq!(strip_of(2, 3).render_wrapped(10).dimensions(), (150, 52));
    }

    /// A hires-fix run's larger second-pass previews are scaled into the first pass's cell size.
    #[test]
    fn cells_of_another_size_are_scaled_to_the_first() {
        let mut strip = StepStrip::for_run(2, 2);
        strip
            .push_image(RgbImage::from_pixel(4, 3, Rgb([10, 20, 30])))
            .expect("first");
        strip
            .push_image(RgbImage::from_pixel(8, 6, Rgb([200, 100, 50])))
            .expect("larger");
        assert_eq!(strip.cell_size(), (4, 3));
        let out = strip.render();
        assert_eq!(out.dimensions(), (2 * (4 + 2), 3 + 4));
        // A uniform cell stays uniform when scaled.
        assert_eq!(*out.get_pixel(6 + 1 + 3, 2 + 2), Rgb([200, 100, 50]));
    }

    #[test]
    fn strip_files_sit_next_to_their_image() {
        assert_eq!(
            strip_path(Path::new("out/000042.1592514025.png")),
            Path::new("out/000042.1592514025.strip.png")
        );
    }
}
