//! Text without fonts. Bitmaps (PNG, GIF) get a 5 x 7 pixel font drawn here, so that plots work
//! on a headless Pi with no font installed; SVG gets real `<text>` elements, set in the viewer's
//! sans-serif, so that its words can be searched and read by tools.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

/// 5 x 7 glyphs, a row per byte (bit 4 the leftmost column); anything unknown is a hollow box.
fn glyph(c: char) -> [u8; 7] {
    match c {
        ' ' => [0; 7],
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        'a' => [0, 0, 14, 1, 15, 17, 15],
        'b' => [16, 16, 22, 25, 17, 17, 30],
        'c' => [0, 0, 14, 16, 16, 17, 14],
        'd' => [1, 1, 13, 19, 17, 17, 15],
        'e' => [0, 0, 14, 17, 31, 16, 14],
        'f' => [6, 9, 8, 28, 8, 8, 8],
        'g' => [0, 15, 17, 17, 15, 1, 14],
        'h' => [16, 16, 22, 25, 17, 17, 17],
        'i' => [4, 0, 12, 4, 4, 4, 14],
        'j' => [2, 0, 6, 2, 2, 18, 12],
        'k' => [16, 16, 18, 20, 24, 20, 18],
        'l' => [12, 4, 4, 4, 4, 4, 14],
        'm' => [0, 0, 26, 21, 21, 17, 17],
        'n' => [0, 0, 22, 25, 17, 17, 17],
        'o' => [0, 0, 14, 17, 17, 17, 14],
        'p' => [0, 0, 30, 17, 30, 16, 16],
        'q' => [0, 0, 13, 19, 15, 1, 1],
        'r' => [0, 0, 22, 25, 16, 16, 16],
        's' => [0, 0, 14, 16, 14, 1, 30],
        't' => [8, 8, 28, 8, 8, 9, 6],
        'u' => [0, 0, 17, 17, 17, 19, 13],
        'v' => [0, 0, 17, 17, 17, 10, 4],
        'w' => [0, 0, 17, 17, 21, 21, 10],
        'x' => [0, 0, 17, 10, 4, 10, 17],
        'y' => [0, 0, 17, 17, 15, 1, 14],
        'z' => [0, 0, 31, 2, 4, 8, 31],
        '-' | '\u{2013}' | '\u{2212}' => [0, 0, 0, 31, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        ';' => [0, 12, 12, 0, 12, 4, 8],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '[' => [14, 8, 8, 8, 8, 8, 14],
        ']' => [14, 2, 2, 2, 2, 2, 14],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        '\'' => [4, 4, 8, 0, 0, 0, 0],
        '&' => [12, 18, 20, 8, 21, 18, 13],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '<' => [2, 4, 8, 16, 8, 4, 2],
        '>' => [8, 4, 2, 1, 2, 4, 8],
        '#' => [10, 10, 31, 10, 31, 10, 10],
        '°' => [12, 18, 18, 12, 0, 0, 0],
        '·' => [0, 0, 0, 12, 12, 0, 0],
        '×' => [0, 17, 10, 4, 10, 17, 0],
        _ => [31, 17, 17, 17, 17, 17, 31],
    }
}

/// Where a line of text sits relative to its anchor point.
#[derive(Clone, Copy)]
pub enum Align {
    Left,
    Centre,
    Right,
}

/// Writes text on a bitmap (with the glyphs above, `scale` pixels per dot) or as SVG text of
/// the same size, so that layouts measured with [`Pen::width`] hold for both.
#[derive(Clone, Copy)]
pub struct Pen {
    pub scale: i32,
    pub vector: bool,
}

impl Pen {
    /// The height of a line of text, in pixels (without spacing).
    pub fn height(&self) -> i32 {
        7 * self.scale
    }

    /// The advance of one character, in pixels.
    pub fn advance(&self) -> i32 {
        6 * self.scale
    }

    pub fn width(&self, text: &str) -> i32 {
        text.chars().count() as i32 * self.advance()
    }

    /// Draws `text` with its top edge at `y`, aligned at `x`; `vertical` turns it to read
    /// upward, aligned along its length at `y` (Left: starting there) with its top edge at `x`.
    pub fn write<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        text: &str,
        (x, y): (i32, i32),
        align: Align,
        vertical: bool,
        colour: &RGBColor,
    ) -> Result<()> {
        let w = self.width(text);
        if self.vector {
            let h = match align {
                Align::Left => HPos::Left,
                Align::Centre => HPos::Center,
                Align::Right => HPos::Right,
            };
            let mut style = TextStyle::from(("sans-serif", 1.4 * self.height() as f64).into_font())
                .color(colour)
                .pos(Pos::new(h, VPos::Top));
            if vertical {
                style = style.transform(FontTransform::Rotate270);
            }
            return area
                .draw_text(text, &style, (x, y))
                .map_err(|e| anyhow!("{e}"));
        }
        let start = match align {
            Align::Left => 0,
            Align::Centre => -w / 2,
            Align::Right => -w,
        };
        let s = self.scale;
        for (k, c) in text.chars().enumerate() {
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..5 {
                    if bits & (16 >> col) == 0 {
                        continue;
                    }
                    let along = start + k as i32 * self.advance() + col * s;
                    let across = row as i32 * s;
                    let (px, py) = if vertical {
                        (x + across, y - along - s)
                    } else {
                        (x + along, y + across)
                    };
                    area.draw(&Rectangle::new(
                        [(px, py), (px + s, py + s)],
                        colour.filled(),
                    ))
                    .map_err(|e| anyhow!("{e}"))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_character_a_plot_writes_has_a_glyph() {
        let hollow = glyph('\u{1}');
        for c in "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ -_.,:;%()[]/'&+=<>#°·×–"
            .chars()
        {
            assert!(c == ' ' || glyph(c) != hollow, "{c:?} has no glyph");
        }
    }
}
