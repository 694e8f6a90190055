//! Turning package specs into installer runs.

use std::time::Duration;

use agentbox_config::{PackageManager, PackageSpec};

use crate::types::ExecRequest;
use crate::{Error, Result};

/// The executions that install `packages`: one pip run and one npm run at most.
///
/// # Errors
/// [`Error::Unsupported`] for apt packages, which need root in a writable
/// system layer that sandboxes do not have.
pub fn install_requests(packages: &[PackageSpec]) -> Result<Vec<ExecRequest>> {
    if let Some(apt) = packages.iter().find(|p| p.manager == PackageManager::Apt) {
        return Err(Error::Unsupported(format!(
            "cannot install {apt}: apt packages need root and a writable system layer, which sandboxes do not have; \
             use a pip or npm package, or a host image that already has it"
        )));
    }
    let args = |m: PackageManager| -> Vec<String> {
        packages.iter().filter(|p| p.manager == m).map(PackageSpec::installer_arg).collect()
    };
    let mut out = Vec::new();
    let pip = args(PackageManager::Pip);
    if !pip.is_empty() {
        let mut argv: Vec<String> = [
            "python3",
            "-m",
            "pip",
            "install",
            "--user",
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--",
        ]
        .map(str::to_owned)
        .into();
        argv.extend(pip);
        out.push(ExecRequest { timeout: Some(Duration::from_secs(600)), ..ExecRequest::argv(argv) });
    }
    let npm = args(PackageManager::Npm);
    if !npm.is_empty() {
        let mut argv: Vec<String> =
            // Into the home, whoever the user is: an execution without a cwd starts there.
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", ".", "--"].map(str::to_owned).into();
        argv.extend(npm);
        out.push(ExecRequest { timeout: Some(Duration::from_secs(600)), ..ExecRequest::argv(argv) });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_manager_and_refuses_apt() {
        let specs: Vec<PackageSpec> =
            ["pandas==2.2", "npm:lodash", "pip:six"].iter().map(|s| s.parse().unwrap()).collect();
        let reqs = install_requests(&specs).unwrap();
        assert_eq!(reqs.len(), 2);
        let pip = reqs[0].to_argv().unwrap();
        assert_eq!(pip[..3], ["python3", "-m", "pip"]);
        assert_eq!(pip[pip.len() - 2..], ["pandas==2.2", "six"]);
        let npm = reqs[1].to_argv().unwrap();
        assert_eq!(npm.last().unwrap(), "lodash");
        // No user's home is written in: the run starts in the sandbox user's own.
        assert!(npm.iter().all(|a| !a.starts_with("/home")) && reqs[1].cwd.is_none(), "{npm:?}");
        let apt: Vec<PackageSpec> = vec!["apt:jq".parse().unwrap()];
        assert!(matches!(install_requests(&apt), Err(Error::Unsupported(m)) if m.contains("apt:jq")));
    }
}
