//! `agentbox presets`: the named starting configurations.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use agentbox_config::{Preset, SandboxConfig};

use super::CliError;

/// Arguments of `agentbox presets`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show only this preset (default, lightweight, heavy_compute or browser).
    pub name: Option<String>,
    /// Print JSON: an object keyed by preset name with every configuration field.
    #[arg(long)]
    pub json: bool,
}

/// Prints the presets to stdout.
///
/// # Errors
/// [`CliError::Usage`] for an unknown preset name; output errors.
pub fn run(args: &Args) -> Result<(), CliError> {
    let presets: Vec<Preset> = match &args.name {
        Some(name) => vec![name.parse::<Preset>()?],
        None => Preset::ALL.to_vec(),
    };
    let mut out = io::stdout().lock();
    if args.json {
        let by_name: BTreeMap<&str, SandboxConfig> = presets.iter().map(|p| (p.name(), p.config())).collect();
        serde_json::to_writer_pretty(&mut out, &by_name)?;
        writeln!(out)?;
    } else {
        out.write_all(table(&presets).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// A readable table, one preset per row.
fn table(presets: &[Preset]) -> String {
    const HEADER: [&str; 10] = [
        "PRESET",
        "CPUS",
        "MEMORY",
        "DISK",
        "/DEV/SHM",
        "PROCESSES",
        "NETWORK",
        "STARTUP",
        "EXEC TIMEOUT",
        "IDLE TIMEOUT",
    ];
    let rows: Vec<[String; 10]> = presets
        .iter()
        .map(|p| {
            let c = p.config();
            [
                p.name().to_owned(),
                c.cpu_count.to_string(),
                format!("{} MiB", c.memory_mb),
                format!("{} GiB", c.disk_gb),
                format!("{} MiB", c.storage.shm_size_mb),
                c.security.max_processes.to_string(),
                on_off(c.network.enabled).to_owned(),
                human(c.startup_timeout),
                human(c.execution_timeout),
                human(c.idle_timeout),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&HEADER);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out.push_str("\nEvery field of a preset: agentbox presets [NAME] --json\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_preset_with_its_numbers() {
        let t = table(&Preset::ALL);
        let rows: Vec<Vec<&str>> = t.lines().take(5).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0][..3], ["PRESET", "CPUS", "MEMORY"]);
        assert_eq!(rows[1][..6], ["default", "2", "512", "MiB", "10", "GiB"]);
        assert_eq!(rows[3][..6], ["heavy_compute", "4", "2048", "MiB", "20", "GiB"]);
        assert_eq!(rows[4][..8], ["browser", "2", "1024", "MiB", "10", "GiB", "512", "MiB"]);
    }
}
