//! Image grids: InvokeAI's `-g` grid of a run's images, and labelled grids for studies (rows and columns of
//! images with text labels, e.g. strengths down the side and step counts across the top).
//!
//! Text is drawn with the public-domain 8×8 bitmap font of the `font8x8` crate (ASCII; other characters
//! show as `?`), scaled by whole pixels so it stays crisp.

use crate::{Error, Result};
use font8x8::legacy::BASIC_LEGACY;
use image::{Rgb, RgbImage};

/// Background of labelled grids and text blocks.
pub const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
/// Text colour.
pub const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
/// Label glyphs are the 8×8 font at this scale (16 px), readable under a 512-px image.
pub const LABEL_SCALE: u32 = 2;
/// Space between cells and around the labels of a labelled grid, in pixels.
pub const PAD: u32 = 8;

/// (rows, columns) of InvokeAI's `make_grid`: as square as possible (`rows = floor(√n)`,
/// `columns = ceil(n / rows)`), or `columns` given and as many rows as needed.
pub fn grid_shape(count: usize, columns: Option<usize>) -> (usize, usize) {
    if count == 0 {
        return (0, 0);
    }
    match columns {
        Some(c) if c > 0 => (count.div_ceil(c), c.min(count)),
        _ => {
            let rows = count.isqrt();
            (rows, count.div_ceil(rows))
        }
    }
}

/// InvokeAI's `-g` grid: the images edge to edge, row by row, on black (where the last row is short).
/// All images must have the same size.
pub fn image_grid(images: &[RgbImage], columns: Option<usize>) -> Result<RgbImage> {
    let first = images
        .first()
        .ok_or_else(|| Error::invalid("grid", "a grid needs at least one image"))?;
    let (w, h) = first.dimensions();
    if let Some(other) = images.iter().find(|i| i.dimensions() != (w, h)) {
        return Err(Error::invalid(
            "grid",
            format!(
                "all images of a grid must have one size; {}×{} and {}×{} differ",
                w,
                h,
                other.width(),
                other.height()
            ),
        ));
    }
    let (rows, cols) = grid_shape(images.len(), columns);
    let mut out = RgbImage::new(w * cols as u32, h * rows as u32);
    for (i, img) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        image::imageops::replace(&mut out, img, i64::from(w) * c as i64, i64::from(h) * r as i64);
    }
    Ok(out)
}

/// Size in pixels of `text` (lines split at `\n`) drawn at `scale`.
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    if text.is_empty() {
        return (0, 0);
    }
    let lines = text.lines().count().max(1) as u32;
    let longest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    (longest * 8 * scale, lines * line_height(scale) - 2 * scale)
}

/// Glyph height plus the gap between lines.
fn line_height(scale: u32) -> u32 {
    10 * scale
}

/// Draws `text` with its top-left corner at (x, y); pixels outside the image are skipped.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: Rgb<u8>) {
    for (line_no, line) in text.lines().enumerate() {
        let top = y + line_no as u32 * line_height(scale);
        for (i, ch) in line.chars().enumerate() {
            let glyph = BASIC_LEGACY[if ch.is_ascii() { ch as usize } else { '?' as usize }];
            let left = x + i as u32 * 8 * scale;
            for (gy, bits) in glyph.iter().enumerate() {
                for gx in 0..8u32 {
                    // Bit 0 is the leftmost pixel of the row.
                    if bits >> gx & 1 == 0 {
                        continue;
                    }
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (left + gx * scale + dx, top + gy as u32 * scale + dy);
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `text` in black on white with a `PAD`-pixel margin.
pub fn text_image(text: &str, scale: u32) -> RgbImage {
    let (w, h) = text_size(text, scale);
    let mut out = RgbImage::from_pixel(w + 2 * PAD, h + 2 * PAD, WHITE);
    draw_text(&mut out, PAD, PAD, text, scale, BLACK);
    out
}

/// The parts one above the other, each centred horizontally, `gap` white pixels apart.
pub fn stack_vertical(parts: &[&RgbImage], gap: u32) -> RgbImage {
    let width = parts.iter().map(|p| p.width()).max().unwrap_or(0);
    let height = parts.iter().map(|p| p.height()).sum::<u32>() + gap * parts.len().saturating_sub(1) as u32;
    let mut out = RgbImage::from_pixel(width, height, WHITE);
    let mut y = 0u32;
    for part in parts {
        let x = (width - part.width()) / 2;
        image::imageops::replace(&mut out, *part, i64::from(x), i64::from(y));
        y += part.height() + gap;
    }
    out
}

/// Where everything of a labelled grid goes.
#[derive(Debug, Clone, PartialEq)]
pub struct GridLayout {
    pub width: u32,
    pub height: u32,
    /// Top-left corner of each cell, `[row][column]`.
    pub cells: Vec<Vec<(u32, u32)>>,
    /// Top-left corner of each row label and column label.
    pub row_labels: Vec<(u32, u32)>,
    pub column_labels: Vec<(u32, u32)>,
}

/// Computes the layout of [`labelled_grid`]: a title line, column labels centred over their columns,
/// row labels left of their rows (vertically centred); each column as wide as its widest cell or label,
/// each row as tall as its tallest cell; cells centred in their column and `PAD` pixels apart.
pub fn labelled_grid_layout(
    cells: &[Vec<RgbImage>],
    row_labels: &[String],
    column_labels: &[String],
    title: Option<&str>,
) -> Result<GridLayout> {
    let columns = column_labels.len();
    if cells.is_empty() || columns == 0 {
        return Err(Error::invalid(
            "grid",
            "a study grid needs at least one row and one column",
        ));
    }
    if row_labels.len() != cells.len() {
        return Err(Error::invalid(
            "grid",
            format!("{} row labels for {} rows", row_labels.len(), cells.len()),
        ));
    }
    if let Some(row) = cells.iter().position(|r| r.len() != columns) {
        return Err(Error::invalid(
            "grid",
            format!(
                "row {} has {} cells for {columns} column labels",
                row + 1,
                cells[row].len()
            ),
        ));
    }
    let size = |t: &str| text_size(t, LABEL_SCALE);
    let col_w: Vec<u32> = (0..columns)
        .map(|c| {
            let widest_cell = cells.iter().map(|r| r[c].width()).max().unwrap_or(0);
            widest_cell.max(size(&column_labels[c]).0)
        })
        .collect();
    let row_h: Vec<u32> = cells
        .iter()
        .zip(row_labels)
        .map(|(r, label)| r.iter().map(|c| c.height()).max().unwrap_or(0).max(size(label).1))
        .collect();
    let label_w = row_labels.iter().map(|l| size(l).0).max().unwrap_or(0);
    let header_h = column_labels.iter().map(|l| size(l).1).max().unwrap_or(0);
    let title_h = title.map(|t| size(t).1 + PAD).unwrap_or(0);

    let left = PAD + if label_w > 0 { label_w + PAD } else { 0 };
    let top = PAD + title_h + if header_h > 0 { header_h + PAD } else { 0 };
    let mut col_x = Vec::with_capacity(columns);
    let mut x = left;
    for w in &col_w {
        col_x.push(x);
        x += w + PAD;
    }
    let mut row_y = Vec::with_capacity(cells.len());
    let mut y = top;
    for h in &row_h {
        row_y.push(y);
        y += h + PAD;
    }
    let title_w = title.map(|t| size(t).0 + 2 * PAD).unwrap_or(0);
    Ok(GridLayout {
        width: x.max(title_w),
        height: y,
        cells: cells
            .iter()
            .enumerate()
            .map(|(r, row)| {
                row.iter()
                    .enumerate()
                    .map(|(c, cell)| (col_x[c] + (col_w[c] - cell.width()) / 2, row_y[r]))
                    .collect()
            })
            .collect(),
        row_labels: row_labels
            .iter()
            .enumerate()
            .map(|(r, l)| (PAD, row_y[r] + (row_h[r] - size(l).1) / 2))
            .collect(),
        column_labels: column_labels
            .iter()
            .enumerate()
            .map(|(c, l)| (col_x[c] + (col_w[c] - size(l).0) / 2, PAD + title_h))
            .collect(),
    })
}

/// A labelled grid on white: `cells[row][column]`, one label per row and per column, an optional title.
/// Cells may differ in size (an image with its step strip under it, say).
pub fn labelled_grid(
    cells: &[Vec<RgbImage>],
    row_labels: &[String],
    column_labels: &[String],
    title: Option<&str>,
) -> Result<RgbImage> {
    let layout = labelled_grid_layout(cells, row_labels, column_labels, title)?;
    let mut out = RgbImage::from_pixel(layout.width, layout.height, WHITE);
    if let Some(t) = title {
        draw_text(&mut out, PAD, PAD, t, LABEL_SCALE, BLACK);
    }
    for (label, &(x, y)) in row_labels.iter().zip(&layout.row_labels) {
        draw_text(&mut out, x, y, label, LABEL_SCALE, BLACK);
    }
    for (label, &(x, y)) in column_labels.iter().zip(&layout.column_labels) {
        draw_text(&mut out, x, y, label, LABEL_SCALE, BLACK);
    }
    for (row, origins) in cells.iter().zip(&layout.cells) {
        for (cell, &(x, y)) in row.iter().zip(origins) {
            image::imageops::replace(&mut out, cell, i64::from(x), i64::from(y));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(w: u32, h: u32, v: u8) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb([v, 255 - v, v / 2]))
    }

    /// InvokeAI's `make_grid(image_list)` shapes, evaluated in Python: `rows = floor(sqrt(n))`,
    /// `cols = ceil(n / rows)` for n = 1, 2, 3, 4, 5, 6, 8, 9, 10.
    #[test]
    fn grid_shape_follows_make_grid() {
        let expected = [
            (1, (1, 1)),
            (2, (1, 2)),
            (3, (1, 3)),
            (4, (2, 2)),
            (5, (2, 3)),
            (6, (2, 3)),
            (8, (2, 4)),
            (9, (3, 3)),
            (10, (3, 4)),
        ];
        for (n, shape) in expected {
            assert_eq!(grid_shape(n, None), shape, "{n} images");
        }
        assert_eq!(grid_shape(5, Some(2)), (3, 2));
        assert_eq!(grid_shape(2, Some(4)), (1, 2));
    }

    #[test]
    fn image_grid_pastes_edge_to_edge_on_black() {
        let images: Vec<RgbImage> = (0..5).map(|i| flat(4, 3, 40 * i)).collect();
        let grid = image_grid(&images, None).expect("grid");
        assert_eq!(grid.dimensions(), (12, 6));
        for (i, img) in images.iter().enumerate() {
            let (x, y) = (4 * (i as u32 % 3), 3 * (i as u32 / 3));
            assert_eq!(grid.get_pixel(x, y), img.get_pixel(0, 0), "image {i}");
            assert_eq!(grid.get_pixel(x + 3, y + 2), img.get_pixel(3, 2), "image {i}");
        }
        assert_eq!(*grid.get_pixel(11, 5), Rgb([0, 0, 0]), "the empty sixth place");
        assert!(image_grid(&[flat(4, 3, 0), flat(3, 4, 0)], None).is_err());
        assert!(image_grid(&[], None).is_err());
    }

    /// 'A' of the public-domain font8x8_basic.h (dhepper/font8x8): rows 0x0C 0x1E 0x33 0x33 0x3F 0x33 0x33 0x00,
    /// least significant bit leftmost.
    #[test]
    fn draws_font8x8_glyphs() {
        let mut img = RgbImage::from_pixel(8, 8, WHITE);
        draw_text(&mut img, 0, 0, "A", 1, BLACK);
        let rows: Vec<String> = (0..8)
            .map(|y| {
                (0..8)
                    .map(|x| if img.get_pixel(x, y)[0] == 0 { '#' } else { '.' })
                    .collect()
            })
            .collect();
        assert_eq!(
            rows,
            ["..##....", ".####...", "##..##..", "##..##..", "######..", "##..##..", "##..##..", "........"]
        );
        assert_eq!(text_size("strength 0.7", 2), (192, 16));
        assert_eq!(text_size("a\nbcd", 1), (24, 18));
    }

    #[test]
    fn labelled_grid_places_cells_and_labels() {
        let cells = vec![
            vec![flat(64, 96, 10), flat(64, 120, 20)],
            vec![flat(64, 96, 30), flat(64, 96, 40)],
        ];
        let rows = ["strength 0.7".to_string(), "strength 0.4".to_string()];
        let cols = ["-s 10".to_string(), "-s 30".to_string()];
        let layout = labelled_grid_layout(&cells, &rows, &cols, Some("fire")).expect("layout");
        // Left margin: PAD + 192-px row label + PAD; top: PAD + 16-px title + PAD + 16-px header + PAD.
        let (left, top) = (8 + 192 + 8, 8 + 16 + 8 + 16 + 8);
        // Columns are 80 px wide (the 5-character label), the 64-px cells centred in them.
        assert_eq!(layout.cells[0], vec![(left + 8, top), (left + 88 + 8, top)]);
        // Row 0 is as tall as its tallest cell (120 px).
        assert_eq!(layout.cells[1][0], (left + 8, top + 120 + 8));
        assert_eq!((layout.width, layout.height), (left + 2 * 88, top + 120 + 8 + 96 + 8));
        assert_eq!(layout.row_labels[0], (8, top + (120 - 16) / 2));
        assert_eq!(layout.column_labels[1], (left + 88, 8 + 16 + 8));

        let grid = labelled_grid(&cells, &rows, &cols, Some("fire")).expect("grid");
        assert_eq!(grid.dimensions(), (layout.width, layout.height));
        for (r, row) in cells.iter().enumerate() {
            for (c, cell) in row.iter().enumerate() {
                let (x, y) = layout.cells[r][c];
                let view = image::imageops::crop_imm(&grid, x, y, cell.width(), cell.height()).to_image();
                assert_eq!(&view, cell, "cell {r},{c}");
            }
        }
        // Some label pixels are black, the corner is white.
        let (lx, ly) = layout.row_labels[1];
        assert!((0..16).any(|dx| grid.get_pixel(lx + dx, ly + 4)[0] == 0));
        assert_eq!(*grid.get_pixel(0, 0), WHITE);
    }

    #[test]
    fn labelled_grid_rejects_ragged_input() {
        let cells = vec![vec![flat(4, 4, 0)], vec![flat(4, 4, 0), flat(4, 4, 0)]];
        let labels = ["a".to_string(), "b".to_string()];
        assert!(labelled_grid(&cells, &labels, &labels[..1], None).is_err());
        assert!(labelled_grid(&cells[..1], &labels, &labels[..1], None).is_err());
    }

    #[test]
    fn stacks_centred() {
        let out = stack_vertical(&[&flat(4, 2, 0), &flat(8, 3, 100)], 1);
        assert_eq!(out.dimensions(), (8, 6));
        assert_eq!(*out.get_pixel(0, 0), WHITE);
        assert_eq!(out.get_pixel(2, 0), flat(1, 1, 0).get_pixel(0, 0));
        assert_eq!(*out.get_pixel(2, 2), WHITE);
        assert_eq!(out.get_pixel(0, 3), flat(1, 1, 100).get_pixel(0, 0));
    }
}
