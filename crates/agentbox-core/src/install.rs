//! Turning package specs into installer runs.

use std::time::Duration;

use agentbox_config::{PackageManager, PackageSpec};

use crate::types::ExecRequest;
use crate::{Error, Result};

/// Where apt packages can be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AptSupport {
    /// They can: the sandbox allows root inside and its root is writable (an image's).
    Root,
    /// They can't, and why.
    No(&'static str),
}

/// The executions that install `packages`: one apt run (as root, first, where `apt` allows it), one pip run and
/// one npm run at most.
///
/// # Errors
/// [`Error::Unsupported`] for apt packages where `apt` doesn't allow them, saying why.
pub fn install_requests(packages: &[PackageSpec], apt: AptSupport) -> Result<Vec<ExecRequest>> {
    let args = |m: PackageManager| -> Vec<String> {
        packages.iter().filter(|p| p.manager == m).map(PackageSpec::installer_arg).collect()
    };
    let mut out = Vec::new();
    if let Some(first) = packages.iter().find(|p| p.manager == PackageManager::Apt) {
        if let AptSupport::No(why) = apt {
            return Err(Error::Unsupported(format!(
                "cannot install {first}: apt packages need root inside and a writable system ({why}); create the \
                 sandbox from an image with security.allow_root_inside = true, or use a template that has it"
            )));
        }
        let mut argv: Vec<String> =
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "--"].map(str::to_owned).into();
        argv.extend(args(PackageManager::Apt));
        // The package lists first: images ship without them.
        let line = format!("apt-get update -q && {}", argv.join(" "));
        let mut request = ExecRequest {
            timeout: Some(Duration::from_secs(900)),
            user: Some("root".into()),
            ..ExecRequest::argv(["/bin/sh", "-c", &line])
        };
        request.env.insert("DEBIAN_FRONTEND".into(), "noninteractive".into());
        out.push(request);
    }
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
        // Into the home, whoever the user is (`.` is the home: relative directories are under it).
        out.push(ExecRequest {
            timeout: Some(Duration::from_secs(600)),
            cwd: Some(".".into()),
            ..ExecRequest::argv(argv)
        });
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
        let reqs = install_requests(&specs, AptSupport::No("none")).unwrap();
        assert_eq!(reqs.len(), 2);
        let pip = reqs[0].to_argv().unwrap();
        assert_eq!(pip[..3], ["python3", "-m", "pip"]);
        assert_eq!(pip[pip.len() - 2..], ["pandas==2.2", "six"]);
        let npm = reqs[1].to_argv().unwrap();
        assert_eq!(npm.last().unwrap(), "lodash");
        // No user's home is written in: the run starts in the sandbox user's own.
        assert!(npm.iter().all(|a| !a.starts_with("/home")) && reqs[1].cwd.as_deref() == Some("."), "{npm:?}");
        let apt: Vec<PackageSpec> = vec!["apt:jq".parse().unwrap(), "apt:curl=7.88.1-10".parse().unwrap()];
        let refused = install_requests(&apt, AptSupport::No("root inside is not allowed"));
        assert!(matches!(&refused, Err(Error::Unsupported(m)) if m.contains("apt:jq") && m.contains("root inside")));
        let reqs = install_requests(&apt, AptSupport::Root).unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].user.as_deref(), Some("root"));
        let line = reqs[0].to_argv().unwrap().join(" ");
        assert!(line.ends_with("apt-get install -y -q --no-install-recommends -- jq curl=7.88.1-10"), "{line}");
        assert_eq!(reqs[0].env.get("DEBIAN_FRONTEND").map(String::as_str), Some("noninteractive"));
    }
}
