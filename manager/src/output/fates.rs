//! What became of each particle when a run settles larvae: in the trajectory file, the
//! settlement polygon each particle settled in (`destination`, an index into the string
//! coordinate `destination_name`) and when (`settlement_time`); and at the end, the
//! connectivity matrix (`[output] connectivity`): for each release site (`origin`), settlement
//! polygon (`destination`) and, when releases repeat, release, how many particles settled there
//! and the share of those released, as CF NetCDF with a CSV beside it.

use super::create_cf;
use crate::input::release::Origins;
use crate::input::timefmt::format_datetime;
use anyhow::{Context, Result};
use shoal_common::behaviour::Area;
use shoal_common::snapshot::Snapshot;
use shoal_common::status;
use std::path::{Path, PathBuf};

/// The settlement polygons and, per particle, where it settled (-1: nowhere yet).
pub struct Fates {
    pub areas: Vec<Area>,
    pub names: Vec<String>,
    pub destination: Vec<i32>,
    pub settlement_time: Vec<f64>,
    /// Where the connectivity matrix goes, and the release it counts from.
    pub connectivity: Option<(PathBuf, Origins)>,
    /// The run clock's zero (Unix seconds) and direction, for the matrix's metadata.
    pub reference: f64,
    pub backward: bool,
}

impl Fates {
    pub fn new(
        areas: Vec<Area>,
        names: Vec<String>,
        n: usize,
        connectivity: Option<(PathBuf, Origins)>,
        reference: f64,
        backward: bool,
    ) -> Fates {
        Fates {
            areas,
            names,
            destination: vec![-1; n],
            settlement_time: vec![f64::NAN; n],
            connectivity,
            reference,
            backward,
        }
    }

    /// Adds the variables to a new trajectory file.
    pub fn define(&self, f: &mut netcdf::FileMut) -> netcdf::Result<()> {
        let reference = self.reference;
        f.add_dimension("destination", self.names.len())?;
        let mut v = f.add_string_variable("destination_name", &["destination"])?;
        v.put_attribute("long_name", "settlement polygon")?;
        for (k, name) in self.names.iter().enumerate() {
            v.put_string(name, [k])?;
        }
        let mut v = f.add_variable::<i32>("destination", &["trajectory"])?;
        v.put_attribute(
            "long_name",
            "settlement polygon the particle settled in, an index into destination_name",
        )?;
        v.set_fill_value(-1i32)?;
        let mut v = f.add_variable::<f64>("settlement_time", &["trajectory"])?;
        v.put_attribute("long_name", "time the particle settled")?;
        v.put_attribute(
            "units",
            format!("seconds since {}", format_datetime(reference)),
        )?;
        v.set_fill_value(f64::NAN)?;
        Ok(())
    }

    /// Records the fates in `snap` (rows by particle id) and writes them to `f`.
    pub fn write(&mut self, f: &mut netcdf::FileMut, snap: &[Snapshot]) -> netcdf::Result<()> {
        for s in snap {
            for (i, &id) in s.id.iter().enumerate() {
                let id = id as usize;
                if s.status[i] == status::SETTLED {
                    // The kernel settled it in the first area holding its position.
                    let k = self.areas.iter().position(|a| a.contains(s.x[i], s.y[i]));
                    self.destination[id] = k.map_or(-1, |k| k as i32);
                    self.settlement_time[id] = s.fate_time[i];
                } else {
                    self.destination[id] = -1;
                    self.settlement_time[id] = f64::NAN;
                }
            }
        }
        f.variable_mut("destination")
            .expect("defined")
            .put_values(&self.destination, ..)?;
        f.variable_mut("settlement_time")
            .expect("defined")
            .put_values(&self.settlement_time, ..)?;
        Ok(())
    }

    /// Reads the fates a resumed run had written.
    pub fn load(&mut self, f: &netcdf::FileMut, path: &Path) -> Result<()> {
        let get = |name: &str| {
            f.variable(name).with_context(|| {
                format!(
                    "{}: no `{name}`; not this configuration's file",
                    path.display()
                )
            })
        };
        self.destination = get("destination")?.get_values(..)?;
        self.settlement_time = get("settlement_time")?.get_values(..)?;
        Ok(())
    }

    /// Writes the connectivity matrix, if asked for.
    pub fn finish(&self) -> Result<()> {
        let Some((path, origins)) = &self.connectivity else {
            return Ok(());
        };
        let (reference, backward) = (self.reference, self.backward);
        let m = Matrix::of(origins, &self.destination, self.names.len());
        m.write_netcdf(path, origins, &self.names, reference, backward)
            .with_context(|| format!("writing connectivity {}", path.display()))?;
        let csv = path.with_extension("csv");
        m.write_csv(&csv, origins, &self.names, reference)
            .with_context(|| format!("writing connectivity {}", csv.display()))
    }
}

/// Counts per (release, origin, destination), and particles released per (release, origin).
pub struct Matrix {
    pub releases: usize,
    pub origins: usize,
    pub destinations: usize,
    pub count: Vec<i32>,
    pub released: Vec<i32>,
}

impl Matrix {
    pub fn of(o: &Origins, destination: &[i32], destinations: usize) -> Matrix {
        let (nr, no) = (o.release_times.len().max(1), o.names.len());
        let mut m = Matrix {
            releases: nr,
            origins: no,
            destinations,
            count: vec![0; nr * no * destinations],
            released: vec![0; nr * no],
        };
        for (id, &d) in destination.iter().enumerate() {
            let (r, k) = (o.release[id] as usize, o.origin[id] as usize);
            m.released[r * no + k] += 1;
            if d >= 0 {
                m.count[(r * no + k) * destinations + d as usize] += 1;
            }
        }
        m
    }

    pub fn probability(&self) -> Vec<f64> {
        self.count
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let r = self.released[i / self.destinations];
                if r > 0 {
                    c as f64 / r as f64
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn write_netcdf(
        &self,
        path: &Path,
        o: &Origins,
        names: &[String],
        reference: f64,
        backward: bool,
    ) -> Result<()> {
        let mut f = create_cf(path, "shoal connectivity matrix")?;
        f.add_attribute(
            "shoal_direction",
            if backward { "backward" } else { "forward" },
        )?;
        super::add_origins(&mut f, &o.names)?;
        f.add_dimension("destination", names.len())?;
        {
            let mut v = f.add_string_variable("destination_name", &["destination"])?;
            v.put_attribute("long_name", "settlement polygon")?;
            for (k, name) in names.iter().enumerate() {
                v.put_string(name, [k])?;
            }
        }
        let repeated = self.releases > 1;
        let dims: &[&str] = if repeated {
            f.add_dimension("release", self.releases)?;
            let mut v = f.add_variable::<f64>("release_time", &["release"])?;
            v.put_attribute("standard_name", "time")?;
            v.put_attribute(
                "units",
                format!("seconds since {}", format_datetime(reference)),
            )?;
            v.put_values(&o.release_times, ..)?;
            &["release", "origin", "destination"]
        } else {
            &["origin", "destination"]
        };
        let mut v = f.add_variable::<i32>("count", dims)?;
        v.put_attribute(
            "long_name",
            "particles released at origin that settled at destination",
        )?;
        v.put_values(&self.count, ..)?;
        let mut v = f.add_variable::<f64>("probability", dims)?;
        v.put_attribute(
            "long_name",
            "share of the particles released at origin that settled at destination",
        )?;
        v.put_attribute("units", "1")?;
        v.put_values(&self.probability(), ..)?;
        let mut v = f.add_variable::<i32>("released", &dims[..dims.len() - 1])?;
        v.put_attribute("long_name", "particles released at origin")?;
        v.put_values(&self.released, ..)?;
        f.close()?;
        Ok(())
    }

    fn write_csv(&self, path: &Path, o: &Origins, names: &[String], reference: f64) -> Result<()> {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = String::from("release_time,origin,destination,count,released,probability\n");
        let p = self.probability();
        for r in 0..self.releases {
            let when = o
                .release_times
                .get(r)
                .map(|t| format_datetime(reference + t))
                .unwrap_or_default();
            for k in 0..self.origins {
                for (d, destination) in names.iter().enumerate().take(self.destinations) {
                    let i = (r * self.origins + k) * self.destinations + d;
                    out.push_str(&format!(
                        "{when},{},{},{},{},{}\n",
                        quote(&o.names[k]),
                        quote(destination),
                        self.count[i],
                        self.released[r * self.origins + k],
                        p[i]
                    ));
                }
            }
        }
        std::fs::write(path, out)?;
        Ok(())
    }
}
