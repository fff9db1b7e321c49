//! `shoal inspect`: what a FVCOM file holds, what shoal will use, and what is missing.

use crate::input::fvcom::FvcomReader;
use crate::input::timefmt::format_datetime;
use anyhow::Result;
use std::fmt::Write;
use std::path::PathBuf;

const KNOWN: &[(&str, &str)] = &[
    ("x", "node x (m)"),
    ("y", "node y (m)"),
    ("lon", "node longitude"),
    ("lat", "node latitude"),
    ("h", "bathymetry"),
    ("nv", "element nodes"),
    ("nbe", "element neighbours"),
    ("a1u", "reconstruction coefficients"),
    ("a2u", "reconstruction coefficients"),
    ("siglay", "sigma layers"),
    ("siglev", "sigma levels"),
    ("Itime", "integer days"),
    ("Itime2", "msec of day"),
    ("Times", "time strings"),
    ("time", "time"),
    ("u", "eastward velocity (3-D)"),
    ("v", "northward velocity (3-D)"),
    ("ua", "depth-averaged eastward velocity"),
    ("va", "depth-averaged northward velocity"),
    ("ww", "vertical velocity"),
    ("zeta", "free surface"),
    ("temp", "temperature"),
    ("salinity", "salinity"),
    ("kh", "vertical eddy diffusivity"),
];

pub fn inspect(paths: &[PathBuf]) -> Result<String> {
    let mut out = String::new();
    let (reader, mesh, notes) = FvcomReader::open(paths, &[])?;
    for p in paths {
        let f = crate::nc::open(p)?;
        writeln!(out, "{}", p.display())?;
        let dims: Vec<String> = f
            .dimensions()
            .map(|d| format!("{}={}", d.name(), d.len()))
            .collect();
        writeln!(out, "  dimensions: {}", dims.join(", "))?;
        let present: Vec<&str> = KNOWN
            .iter()
            .filter(|(n, _)| f.variable(n).is_some())
            .map(|(n, _)| *n)
            .collect();
        let missing: Vec<String> = KNOWN
            .iter()
            .filter(|(n, _)| f.variable(n).is_none())
            .map(|(n, d)| format!("{n} ({d})"))
            .collect();
        writeln!(
            out,
            "  variables used or recognised: {}",
            present.join(", ")
        )?;
        writeln!(
            out,
            "  not present: {}",
            if missing.is_empty() {
                "nothing".into()
            } else {
                missing.join(", ")
            }
        )?;
    }
    let depth_min = mesh.h.iter().cloned().fold(f32::INFINITY, f32::min);
    let depth_max = mesh.h.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let boundary = mesh.boundary_edges();
    let open = boundary
        .iter()
        .filter(|b| b.2 == shoal_common::mesh::OPEN)
        .count();
    writeln!(
        out,
        "mesh: {} nodes, {} elements, {} sigma layers, {:?} coordinates",
        mesh.n_nodes(),
        mesh.n_elements(),
        mesh.vertical.n_layers,
        reader.coordinates
    )?;
    if let Some(crate::input::crs::Geo::Crs { text, .. }) = &reader.geo {
        writeln!(
            out,
            "  projection `{text}` (CoordinateProjection): the output carries lon/lat"
        )?;
    }
    if let Some(tm) = mesh.projection {
        writeln!(
            out,
            "  projected to a transverse Mercator frame centred at lon {:.5}, lat {:.5}",
            tm.lon0, tm.lat0
        )?;
    }
    let depth = if reader.surface_only {
        "surface only: no bathymetry".to_string()
    } else {
        format!("depth {depth_min:.2} .. {depth_max:.2} m")
    };
    writeln!(
        out,
        "  {depth}; smallest edge {:.1} m; {} boundary edges ({} open)",
        mesh.smallest_edge(),
        boundary.len(),
        open
    )?;
    let q = mesh.quality();
    writeln!(
        out,
        "  shape: smallest angle {:.1}° (element {}), {} sliver(s) (an angle under {:.0}°), {} element(s) whose velocity reconstruction is ill-conditioned (neighbour centroids nearly in line)",
        q.smallest_angle_deg,
        mesh.file_element[q.worst_element as usize] + 1,
        q.slivers,
        shoal_common::mesh::MeshQuality::SLIVER_DEG,
        q.ill_conditioned,
    )?;
    if q.slivers > 0 || q.ill_conditioned > 0 {
        writeln!(
            out,
            "  what that means: particles still pass through slivers, vertices and along edges (none is stopped by the geometry), but velocities there come from a linear fit over neighbours nearly in line, so they are less certain; well-made FVCOM meshes keep angles above about 30°"
        )?;
    }
    for n in &notes {
        writeln!(out, "  note: {n}")?;
    }
    let l = &reader.layout;
    writeln!(
        out,
        "fields: velocity `{}`/`{}` ({}), vertical velocity {}, free surface {}, temperature {}, kh {}",
        l.u,
        l.v,
        if l.three_d { "3-D" } else { "2-D" },
        if l.ww { "`ww`" } else { "zero (no `ww`)" },
        if l.zeta { "`zeta`" } else { "zero (no `zeta`)" },
        if l.temp { "yes" } else { "no" },
        if l.kh { "yes" } else { "no" }
    )?;
    let t = &reader.times;
    let step = if t.len() > 1 {
        format!(
            ", every {:.0} s",
            (t[t.len() - 1] - t[0]) / (t.len() - 1) as f64
        )
    } else {
        String::new()
    };
    let step = if t.len() == 1 {
        " (a steady flow: runs of any length use it at every time)".into()
    } else {
        step
    };
    writeln!(
        out,
        "times: {} slices, {} .. {}{step}; read from {}",
        t.len(),
        format_datetime(t[0]),
        format_datetime(t[t.len() - 1]),
        reader.time_source.join(", ")
    )?;
    for w in &reader.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(out)
}
