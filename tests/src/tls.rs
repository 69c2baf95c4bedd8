//! Keys and certificates made with the `openssl` tool, for the tests of TLS
//! and JWT.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs the `openssl` tool in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let ok = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    anyhow::ensure!(ok, "openssl {args:?} failed");
    Ok(())
}

/// A key pair made with `openssl` (`rsa` or `ec`): (private PEM, public PEM).
pub fn key_pair(dir: &Path, kind: &str) -> anyhow::Result<(String, String)> {
    let (private, public) = (format!("{kind}.key"), format!("{kind}.pub"));
    let algorithm: &[&str] = match kind {
        "rsa" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        _ => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    };
    let mut generate = vec!["genpkey"];
    generate.extend(algorithm);
    generate.extend(["-out", &private]);
    openssl(dir, &generate)?;
    openssl(dir, &["pkey", "-pubout", "-in", &private, "-out", &public])?;
    Ok((
        std::fs::read_to_string(dir.join(private))?,
        std::fs::read_to_string(dir.join(public))?,
    ))
}

/// A CA and a server certificate it signs for 127.0.0.1, in `dir`
/// (`ca.pem`, `cert.pem`, `key.pem`).
pub fn certificates(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    for args in [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ][..],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
    ] {
        openssl(dir, args)?;
    }
    Ok(())
}
