//! CF-1.8 trajectory output (`featureType = "trajectory"`, dims `(trajectory, time)` as OpenDrift
//! writes them), appended one snapshot at a time along an unlimited `time` and synced after each,
//! so a run that is killed leaves a readable file of everything written so far. Values are
//! deflated with the shuffle filter in chunks of a few thousand particles ([`Storage`](crate::input::config::Storage)), and
//! positions and depths may be packed as integers to a stated precision.

pub mod checkpoint;
pub mod density;
pub mod fates;
pub mod plot;
pub mod room;

use crate::input::config::Storage;
use crate::input::timefmt::format_datetime;
use anyhow::{Context, Result};
use shoal_common::snapshot::{Sampled, Snapshot};
use shoal_common::status;
use std::path::{Path, PathBuf};

/// A new CF-1.8 file (its directory made if need be) with its title and source.
pub(crate) fn create_cf(path: &Path, title: &str) -> Result<netcdf::FileMut> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = crate::nc::create(path)?;
    f.add_attribute("Conventions", "CF-1.8")?;
    f.add_attribute("title", title)?;
    f.add_attribute("source", format!("shoal {}", shoal_node::VERSION))?;
    // CF's audit trail: when, and the command that wrote the file.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs() as f64);
    let command: Vec<String> = std::env::args().collect();
    f.add_attribute(
        "history",
        format!(
            "{}Z: {} (shoal {})",
            format_datetime(now).replace(' ', "T"),
            command.join(" "),
            shoal_node::VERSION
        ),
    )?;
    Ok(f)
}

/// The `origin` dimension and its string coordinate `origin_name`: the release sites.
pub(crate) fn add_origins(f: &mut netcdf::FileMut, names: &[String]) -> netcdf::Result<()> {
    f.add_dimension("origin", names.len())?;
    let mut v = f.add_string_variable("origin_name", &["origin"])?;
    v.put_attribute("long_name", "release site")?;
    for (k, name) in names.iter().enumerate() {
        v.put_string(name, [k])?;
    }
    Ok(())
}

/// The unlimited `time` coordinate, seconds since the run clock's zero (Unix `reference`).
pub(crate) fn add_time(f: &mut netcdf::FileMut, reference: f64) -> netcdf::Result<()> {
    let mut v = f.add_variable::<f64>("time", &["time"])?;
    v.put_attribute("standard_name", "time")?;
    v.put_attribute(
        "units",
        format!("seconds since {}", format_datetime(reference)),
    )?;
    v.put_attribute("calendar", "proleptic_gregorian")?;
    Ok(())
}

/// Metres in a degree of latitude (and at most in one of longitude).
const METRES_PER_DEGREE: f64 = 111_320.0;

/// Chunks of 4 096 particles by one record. A record is synced as it is written (a killed run
/// leaves a readable file), so a chunk of several records would be compressed and written again
/// at every record of its row (9 records a chunk made the output 5 times slower); small
/// particle chunks let a track read 32 KB of each record instead of 512 KB. Measured against
/// 1 024 to 16 384 particles and 1 to 9 records (BENCHMARKS.md, "Trajectory files").
pub fn chunk_shape(n: usize) -> [usize; 2] {
    [n.clamp(1, 4096), 1]
}

/// A variable packed as 32-bit integers: value = stored * scale + offset.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Packing {
    scale: f64,
    offset: f64,
}

const PACKED_FILL: i32 = i32::MIN;

impl Packing {
    fn of(v: &netcdf::Variable) -> Option<Packing> {
        let num = |name: &str| -> Option<f64> {
            match v.attribute(name)?.value().ok()? {
                netcdf::AttributeValue::Double(x) => Some(x),
                netcdf::AttributeValue::Float(x) => Some(x as f64),
                _ => None,
            }
        };
        Some(Packing {
            scale: num("scale_factor")?,
            offset: num("add_offset").unwrap_or(0.0),
        })
    }

    fn pack(&self, name: &str, values: impl Iterator<Item = f64>) -> Result<Vec<i32>> {
        values
            .map(|v| {
                if !v.is_finite() {
                    return Ok(PACKED_FILL);
                }
                let k = ((v - self.offset) / self.scale).round();
                anyhow::ensure!(
                    k > PACKED_FILL as f64 && k <= i32::MAX as f64,
                    "`{name}` = {v} does not fit 32-bit integers at a precision of {} (key `output.precision`: choose a coarser one)",
                    self.scale
                );
                Ok(k as i32)
            })
            .collect()
    }
}

/// The values of a variable as numbers: unpacked when it is packed (`scale_factor`,
/// `add_offset`), with its fill value as NaN.
pub fn unpacked(v: &netcdf::Variable) -> Result<Vec<f64>> {
    let raw: Vec<f64> = v
        .get_values::<f64, _>(..)
        .with_context(|| format!("reading `{}`", v.name()))?;
    Ok(match Packing::of(v) {
        None => raw,
        Some(p) => raw
            .into_iter()
            .map(|k| {
                if k == PACKED_FILL as f64 {
                    f64::NAN
                } else {
                    k * p.scale + p.offset
                }
            })
            .collect(),
    })
}

/// Which of the optional per-record variables a trajectory file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Columns {
    /// With a preferred temperature.
    pub happiness: bool,
    /// `[output] variables`.
    pub sampled: Sampled,
}

/// A per-record variable of single floats, one value a particle from its snapshot row.
struct Float {
    name: &'static str,
    attrs: &'static [(&'static str, &'static str)],
    value: fn(&Snapshot, usize) -> f32,
    /// Whether a file of these columns holds it.
    held: fn(Columns) -> bool,
}

/// The writer's one list of single-float variables, in the file's order: a new per-particle
/// output variable is a row here. (`z`, which may be packed with the positions, and the integer
/// `status` and `element` are written beside them.)
const FLOATS: [Float; 5] = [
    Float {
        name: "sigma",
        attrs: &[
            ("long_name", "sigma coordinate (0 surface, -1 bottom)"),
            ("units", "1"),
        ],
        value: |s, i| s.sigma[i],
        held: |_| true,
    },
    Float {
        name: "age",
        attrs: &[("long_name", "time since release"), ("units", "s")],
        value: |s, i| s.age[i],
        held: |_| true,
    },
    Float {
        name: "happiness",
        attrs: &[
            ("long_name", "happiness from preferred temperature (0..1)"),
            ("units", "1"),
        ],
        value: |s, i| s.happiness[i],
        held: |c| c.happiness,
    },
    Float {
        name: "temperature",
        attrs: &[
            ("standard_name", "sea_water_temperature"),
            ("long_name", "the water's temperature where the particle is"),
            ("units", "degree_Celsius"),
        ],
        value: |s, i| s.temperature[i],
        held: |c| c.sampled.temperature,
    },
    Float {
        name: "salinity",
        attrs: &[
            ("standard_name", "sea_water_salinity"),
            (
                "long_name",
                "the water's salinity where the particle is, as the input holds it",
            ),
            ("units", "1e-3"),
        ],
        value: |s, i| s.salinity[i],
        held: |c| c.sampled.salinity,
    },
];

pub struct TrajectoryWriter {
    file: netcdf::FileMut,
    path: PathBuf,
    n: usize,
    written: usize,
    /// Packed variables by name.
    packed: Vec<(&'static str, Packing)>,
    projection: Option<crate::input::crs::Geo>,
    columns: Columns,
    /// The density map written at the same times, when the run asks for one.
    density: Option<density::DensityWriter>,
    /// Where particles settled, when the run settles them.
    fates: Option<fates::Fates>,
}

impl TrajectoryWriter {
    /// `reference` is the Unix time of the run clock's zero; `attributes` go in as globals.
    /// `centre`: the middle of the mesh, where packed positions are centred.
    // Each argument is a different part of the file's header, given at one call site (and a
    // test); a struct for them would only be built there to be taken apart here.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        path: &Path,
        n: usize,
        reference: f64,
        projection: Option<crate::input::crs::Geo>,
        columns: Columns,
        origins: Option<&crate::input::release::Origins>,
        attributes: &[(String, String)],
        storage: Storage,
        centre: (f64, f64),
    ) -> Result<Self> {
        let ctx = || format!("creating output {}", path.display());
        let mut f = create_cf(path, "shoal particle trajectories").with_context(ctx)?;
        f.add_attribute("featureType", "trajectory")
            .with_context(ctx)?;
        f.add_attribute("time_coverage_start", format_datetime(reference))
            .with_context(ctx)?;
        for (k, v) in attributes {
            f.add_attribute(k, v.as_str()).with_context(ctx)?;
        }
        f.add_dimension("trajectory", n).with_context(ctx)?;
        f.add_unlimited_dimension("time").with_context(ctx)?;
        {
            let mut v = f
                .add_variable::<i32>("trajectory", &["trajectory"])
                .with_context(ctx)?;
            v.put_attribute("cf_role", "trajectory_id")
                .with_context(ctx)?;
            v.put_attribute("long_name", "particle id")
                .with_context(ctx)?;
            let ids: Vec<i32> = (0..n as i32).collect();
            v.put_values(&ids, ..).with_context(ctx)?;
        }
        if let Some(o) = origins {
            // The release site of each particle, and the sites' names as a string coordinate
            // of their own dimension (CF's flag attributes too, for tools that read those).
            add_origins(&mut f, &o.names).with_context(ctx)?;
            let mut v = f
                .add_variable::<i32>("origin", &["trajectory"])
                .with_context(ctx)?;
            v.put_attribute("long_name", "release site, an index into origin_name")
                .with_context(ctx)?;
            let codes: Vec<i32> = (0..o.names.len() as i32).collect();
            v.put_attribute("flag_values", codes).with_context(ctx)?;
            let meanings: Vec<String> = o
                .names
                .iter()
                .map(|n| n.split_whitespace().collect::<Vec<_>>().join("_"))
                .collect();
            v.put_attribute("flag_meanings", meanings.join(" "))
                .with_context(ctx)?;
            let values: Vec<i32> = o.origin.iter().map(|&k| k as i32).collect();
            anyhow::ensure!(
                values.len() == n,
                "{} release sites for {n} particles",
                values.len()
            );
            v.put_values(&values, ..).with_context(ctx)?;
        }
        add_time(&mut f, reference).with_context(ctx)?;
        let chunk = chunk_shape(n);
        let dims = ["trajectory", "time"];
        let deflate = |v: &mut netcdf::VariableMut| -> Result<()> {
            v.set_chunking(&chunk).with_context(ctx)?;
            if storage.deflate > 0 {
                v.set_compression(storage.deflate, true).with_context(ctx)?;
            }
            Ok(())
        };
        let mut packed: Vec<(&'static str, Packing)> = Vec::new();
        // A packed variable: 32-bit integers with a double scale and offset (CF 8.1 allows int
        // packed data only with double ones; readers unpack to double).
        let mut add_packed = |f: &mut netcdf::FileMut,
                              name: &'static str,
                              attrs: &[(&str, &str)],
                              p: Packing|
         -> Result<()> {
            let mut v = f.add_variable::<i32>(name, &dims).with_context(ctx)?;
            deflate(&mut v)?;
            v.set_fill_value(PACKED_FILL).with_context(ctx)?;
            v.put_attribute("scale_factor", p.scale).with_context(ctx)?;
            v.put_attribute("add_offset", p.offset).with_context(ctx)?;
            for (k, val) in attrs {
                v.put_attribute(k, *val).with_context(ctx)?;
            }
            packed.push((name, p));
            Ok(())
        };
        let geo_centre = projection.as_ref().map(|g| g.inverse(centre.0, centre.1));
        let mut add_f64 =
            |f: &mut netcdf::FileMut, name: &'static str, attrs: &[(&str, &str)]| -> Result<()> {
                if let Some(m) = storage.precision {
                    let (scale, offset) = match name {
                        "x" => (m, centre.0.round()),
                        "y" => (m, centre.1.round()),
                        "lon" => (
                            m / METRES_PER_DEGREE,
                            geo_centre.map_or(0.0, |c| c.0.round()),
                        ),
                        _ => (
                            m / METRES_PER_DEGREE,
                            geo_centre.map_or(0.0, |c| c.1.round()),
                        ),
                    };
                    return add_packed(f, name, attrs, Packing { scale, offset });
                }
                let mut v = f.add_variable::<f64>(name, &dims).with_context(ctx)?;
                deflate(&mut v)?;
                v.set_fill_value(f64::NAN).with_context(ctx)?;
                for (k, val) in attrs {
                    v.put_attribute(k, *val).with_context(ctx)?;
                }
                Ok(())
            };
        add_f64(
            &mut f,
            "x",
            &[("long_name", "x in the mesh's frame"), ("units", "m")],
        )?;
        add_f64(
            &mut f,
            "y",
            &[("long_name", "y in the mesh's frame"), ("units", "m")],
        )?;
        if projection.is_some() {
            add_f64(
                &mut f,
                "lon",
                &[("standard_name", "longitude"), ("units", "degrees_east")],
            )?;
            add_f64(
                &mut f,
                "lat",
                &[("standard_name", "latitude"), ("units", "degrees_north")],
            )?;
        }
        let add_f32 = |f: &mut netcdf::FileMut, name: &str, attrs: &[(&str, &str)]| -> Result<()> {
            let mut v = f.add_variable::<f32>(name, &dims).with_context(ctx)?;
            deflate(&mut v)?;
            v.set_fill_value(f32::NAN).with_context(ctx)?;
            for (k, val) in attrs {
                v.put_attribute(k, *val).with_context(ctx)?;
            }
            Ok(())
        };
        let z_attrs = [
            ("standard_name", "depth"),
            ("long_name", "vertical position relative to the sea surface"),
            ("units", "m"),
            ("positive", "up"),
        ];
        match storage.precision {
            Some(m) => add_packed(
                &mut f,
                "z",
                &z_attrs,
                Packing {
                    scale: m,
                    offset: 0.0,
                },
            )?,
            None => add_f32(&mut f, "z", &z_attrs)?,
        }
        for v in FLOATS.iter().filter(|v| (v.held)(columns)) {
            add_f32(&mut f, v.name, v.attrs)?;
        }
        {
            let mut v = f.add_variable::<i8>("status", &dims).with_context(ctx)?;
            deflate(&mut v)?;
            v.put_attribute("long_name", "particle status")
                .with_context(ctx)?;
            v.put_attribute(
                "flag_values",
                status::FLAG_VALUES
                    .iter()
                    .map(|v| *v as i8)
                    .collect::<Vec<i8>>(),
            )
            .with_context(ctx)?;
            v.put_attribute("flag_meanings", status::FLAG_MEANINGS)
                .with_context(ctx)?;
        }
        {
            let mut v = f.add_variable::<i32>("element", &dims).with_context(ctx)?;
            deflate(&mut v)?;
            v.set_fill_value(-1i32).with_context(ctx)?;
            v.put_attribute(
                "long_name",
                "host element, 0-based index into the mesh's nv",
            )
            .with_context(ctx)?;
        }
        if projection.is_some() {
            // CF's discrete sampling geometry: every per-record variable names where and when
            // it was sampled (compliance-checker's section 5.6 asks for the true lat/lon).
            let names: Vec<String> = f
                .variables()
                .filter(|v| {
                    v.dimensions().len() == 2 && !["lon", "lat"].contains(&v.name().as_str())
                })
                .map(|v| v.name())
                .collect();
            for name in names {
                f.variable_mut(&name)
                    .expect("listed above")
                    .put_attribute("coordinates", "time lat lon")
                    .with_context(ctx)?;
            }
        }
        f.sync().with_context(ctx)?;
        Ok(TrajectoryWriter {
            file: f,
            path: path.to_path_buf(),
            n,
            written: 0,
            packed,
            projection,
            columns,
            density: None,
            fates: None,
        })
    }

    /// Records where and when particles settle, in this file (new: its variables are defined;
    /// resumed: what was written is read back) and, at the end, in the connectivity matrix.
    pub fn attach_fates(&mut self, mut f: fates::Fates, new: bool) -> Result<()> {
        let ctx = || format!("settlement variables in {}", self.path.display());
        if new {
            f.define(&mut self.file).with_context(ctx)?;
        } else {
            f.load(&self.file, &self.path)?;
        }
        self.fates = Some(f);
        Ok(())
    }

    /// Writes a density map at every time this writer writes (and rewinds it with this).
    pub fn attach_density(&mut self, d: density::DensityWriter) {
        self.density = Some(d);
    }

    /// Appends one snapshot at `t` seconds after the reference. Rows may come in any order.
    pub fn write(&mut self, t: f64, snap: &[Snapshot]) -> Result<()> {
        crate::nc::quiet(); // the writer may live on another thread than its creator
        let path = self.path.clone();
        let ctx = || format!("writing output {}", path.display());
        let it = self.written;
        let n = self.n;
        let mut slot = vec![usize::MAX; n];
        let mut rows: Vec<(&Snapshot, usize)> = Vec::with_capacity(n);
        for s in snap {
            for (i, id) in s.id.iter().enumerate() {
                slot[*id as usize] = rows.len();
                rows.push((s, i));
            }
        }
        anyhow::ensure!(
            rows.len() == n && slot.iter().all(|s| *s != usize::MAX),
            "snapshot at t={t} s has {} rows for {n} particles",
            rows.len()
        );
        let col = |f: &dyn Fn(&Snapshot, usize) -> f64| -> Vec<f64> {
            slot.iter().map(|&r| f(rows[r].0, rows[r].1)).collect()
        };
        let colf = |f: &dyn Fn(&Snapshot, usize) -> f32| -> Vec<f32> {
            slot.iter().map(|&r| f(rows[r].0, rows[r].1)).collect()
        };
        self.file
            .variable_mut("time")
            .unwrap()
            .put_values(&[t], it..it + 1)
            .with_context(ctx)?;
        let x = col(&|s, i| s.x[i]);
        let y = col(&|s, i| s.y[i]);
        if let Some(tm) = &self.projection {
            let (lon, lat): (Vec<f64>, Vec<f64>) = x
                .iter()
                .zip(&y)
                .map(|(a, b)| {
                    if a.is_finite() {
                        tm.inverse(*a, *b)
                    } else {
                        (f64::NAN, f64::NAN)
                    }
                })
                .unzip();
            self.put_real("lon", &lon, it)?;
            self.put_real("lat", &lat, it)?;
        }
        self.put_real("x", &x, it)?;
        self.put_real("y", &y, it)?;
        match self.packing("z") {
            Some(p) => {
                let z = p.pack("z", slot.iter().map(|&r| rows[r].0.z[rows[r].1] as f64))?;
                self.put("z", &z, it)?;
            }
            None => self.put("z", &colf(&|s, i| s.z[i]), it)?,
        }
        let columns = self.columns;
        for v in FLOATS.iter().filter(|v| (v.held)(columns)) {
            self.put(v.name, &colf(&v.value), it)?;
        }
        let st: Vec<i8> = slot
            .iter()
            .map(|&r| rows[r].0.status[rows[r].1] as i8)
            .collect();
        self.put("status", &st, it)?;
        let el: Vec<i32> = slot
            .iter()
            .map(|&r| {
                let (s, i) = rows[r];
                if s.status[i] == status::OUTSIDE_MESH || s.status[i] == status::PENDING {
                    -1
                } else {
                    s.element[i] as i32
                }
            })
            .collect();
        self.put("element", &el, it)?;
        if let Some(f) = &mut self.fates {
            f.write(&mut self.file, snap).with_context(ctx)?;
        }
        self.file.sync().with_context(ctx)?;
        if let Some(d) = &mut self.density {
            d.rewind(it);
            d.write(t, snap)?;
        }
        self.written += 1;
        Ok(())
    }

    fn packing(&self, name: &str) -> Option<Packing> {
        self.packed.iter().find(|p| p.0 == name).map(|p| p.1)
    }

    /// Writes a double variable, packed when it is.
    fn put_real(&mut self, name: &str, data: &[f64], it: usize) -> Result<()> {
        match self.packing(name) {
            Some(p) => {
                let packed = p.pack(name, data.iter().copied())?;
                self.put(name, &packed, it)
            }
            None => self.put(name, data, it),
        }
    }

    fn put<T: netcdf::types::NcTypeDescriptor>(
        &mut self,
        name: &str,
        data: &[T],
        it: usize,
    ) -> Result<()> {
        self.file
            .variable_mut(name)
            .unwrap()
            .put_values(data, (.., it..it + 1))
            .with_context(|| format!("writing `{name}` to {}", self.path.display()))
    }

    pub fn snapshots_written(&self) -> usize {
        self.written
    }

    /// Goes back to `records` time records: the next write overwrites the record after them.
    /// A run rolled back to a checkpoint writes the same records again, bit for bit.
    pub fn rewind(&mut self, records: usize) {
        self.written = records.min(self.written);
        if let Some(d) = &mut self.density {
            d.rewind(records);
        }
    }

    /// Opens the output of an interrupted run to go on after its first `records` records
    /// (`--resume`), checking that it is the file that run was writing.
    pub fn reopen(
        path: &Path,
        n: usize,
        projection: Option<crate::input::crs::Geo>,
        columns: Columns,
        records: usize,
    ) -> Result<Self> {
        let ctx = || format!("reopening output {} to resume", path.display());
        let file = crate::nc::append(path).with_context(ctx)?;
        let dim = |name: &str| file.dimension(name).map(|d| d.len());
        let (trajectories, times) = (dim("trajectory"), dim("time"));
        if trajectories != Some(n) || times.is_none_or(|t| t < records) {
            anyhow::bail!(
                "{}: has {trajectories:?} trajectories and {times:?} times, but the checkpoint is of {n} particles after {records} records",
                path.display()
            );
        }
        if file.variable("lon").is_some() != projection.is_some() {
            anyhow::bail!(
                "{}: its variables are not those this configuration writes (lon and lat)",
                path.display()
            );
        }
        if let Some(v) = FLOATS
            .iter()
            .find(|v| file.variable(v.name).is_some() != (v.held)(columns))
        {
            anyhow::bail!(
                "{}: its variables are not those this configuration writes ({})",
                path.display(),
                v.name
            );
        }
        let packed = ["x", "y", "z", "lon", "lat"]
            .into_iter()
            .filter_map(|name| Some((name, Packing::of(&file.variable(name)?)?)))
            .collect();
        Ok(TrajectoryWriter {
            file,
            path: path.to_path_buf(),
            n,
            written: records,
            packed,
            projection,
            columns,
            density: None,
            fates: None,
        })
    }

    /// Sets a global attribute of the file (one known only at the end of the run).
    pub fn set_attribute(&mut self, name: &str, value: &str) -> Result<()> {
        self.file
            .add_attribute(name, value)
            .map(|_| ())
            .with_context(|| format!("writing output {}: attribute `{name}`", self.path.display()))
    }

    pub fn close(self) -> Result<()> {
        if let Some(d) = self.density {
            d.close()?;
        }
        if let Some(f) = &self.fates {
            f.finish()?;
        }
        let p = self.path.clone();
        self.file
            .close()
            .with_context(|| format!("closing {}", p.display()))
    }
}
