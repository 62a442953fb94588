//! The container image works as documented, without a Docker daemon: the Dockerfile's final
//! stage is read and played on this machine in private mount and network namespaces (overlays
//! on /etc and /var/lib, so nothing is written to the real ones): its `RUN` steps that set up
//! the user and the store directory, its `COPY`s of the config, then its `ENTRYPOINT` + `CMD`
//! as its `USER` in its `WORKDIR`. The server must serve on the image's ports on every
//! interface, write its store in the declared `VOLUME` as that non-root user, and pass the
//! image's own `HEALTHCHECK` (run as the same user).
//!
//! Needs root (namespaces and overlays): as root, or through `sudo -n`. Without either, the
//! namespaced part is skipped with a message, unless `UNDERSTUDY_REQUIRE_IMAGE_TEST=1`
//! (`scripts/test.sh` sets it where `unshare --mount --net` works) makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One instruction of the Dockerfile: keyword (upper case) and the rest of its line.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of the Dockerfile's last stage (from its last `FROM`), continuation lines
/// joined, comments left out.
fn final_stage(text: &str) -> Vec<Instruction> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let instructions: Vec<Instruction> = logical
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (keyword, args) = l.trim().split_once(char::is_whitespace).unwrap();
            Instruction {
                keyword: keyword.to_uppercase(),
                args: args.trim().to_string(),
            }
        })
        .collect();
    let last_from = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .unwrap();
    instructions[last_from + 1..].to_vec()
}

fn one<'a>(stage: &'a [Instruction], keyword: &str) -> &'a str {
    let found: Vec<&Instruction> = stage.iter().filter(|i| i.keyword == keyword).collect();
    assert_eq!(found.len(), 1, "expected one {keyword} in the final stage");
    &found[0].args
}

fn json_array(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not the exec form ({e}): {args}"))
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

struct Image {
    /// Shell lines that lay the image's files out (the `RUN`s after the package install, the
    /// `COPY`s from the build context).
    setup: Vec<String>,
    user: String,
    workdir: String,
    volume: String,
    /// `ENTRYPOINT` + `CMD`, the entrypoint (the binary) replaced by the one cargo built.
    command: Vec<String>,
    config_in_image: String,
    healthcheck: Vec<String>,
    exposed: Vec<u16>,
}

fn read_image() -> Image {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let stage = final_stage(&text);
    let mut setup = Vec::new();
    for i in &stage {
        match i.keyword.as_str() {
            // The package install needs the network and changes nothing the test checks.
            "RUN" if i.args.starts_with("apt-get") => {}
            "RUN" => setup.push(i.args.clone()),
            "COPY" if i.args.starts_with("--from=") => {}
            "COPY" => {
                let parts: Vec<&str> = i.args.split_whitespace().collect();
                let [src, dest] = parts.as_slice() else {
                    panic!("COPY with other than one source: {}", i.args)
                };
                let src = Path::new(ROOT).join(src);
                if src.is_dir() {
                    setup.push(format!(
                        "mkdir -p {0} && cp -r {1}/. {0}/",
                        quote(dest),
                        quote(src.to_str().unwrap())
                    ));
                } else {
                    setup.push(format!(
                        "cp {} {}",
                        quote(src.to_str().unwrap()),
                        quote(dest)
                    ));
                }
            }
            _ => {}
        }
    }
    let entrypoint = json_array(one(&stage, "ENTRYPOINT"));
    let cmd = json_array(one(&stage, "CMD"));
    assert_eq!(entrypoint, ["/usr/local/bin/understudy"]);
    let mut command = vec![env!("CARGO_BIN_EXE_understudy").to_string()];
    command.extend(cmd.iter().cloned());
    let config_flag = cmd.iter().position(|a| a == "--config").unwrap();
    let healthcheck = one(&stage, "HEALTHCHECK");
    let exec = healthcheck.split_once("CMD").unwrap().1.trim();
    Image {
        setup,
        user: one(&stage, "USER").to_string(),
        workdir: one(&stage, "WORKDIR").to_string(),
        volume: one(&stage, "VOLUME").to_string(),
        command,
        config_in_image: cmd[config_flag + 1].clone(),
        healthcheck: json_array(exec),
        exposed: one(&stage, "EXPOSE")
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect(),
    }
}

/// The image's config is the reference config but for where it listens and stores.
#[test]
fn the_image_config_is_the_reference_config_on_all_interfaces() {
    let reference =
        std::fs::read_to_string(Path::new(ROOT).join("config/understudy.toml")).unwrap();
    let docker = std::fs::read_to_string(Path::new(ROOT).join("config/docker.toml")).unwrap();
    let content = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (content(&reference), content(&docker));
    assert_eq!(a.len(), b.len());
    let differing: Vec<(&String, &String)> = a.iter().zip(&b).filter(|(x, y)| x != y).collect();
    let keys: Vec<&str> = differing
        .iter()
        .map(|(_, d)| d.split('=').next().unwrap().trim())
        .collect();
    assert_eq!(keys, ["listen", "listen", "path"], "{differing:#?}");

    let image = read_image();
    // Relative paths as in the image: against /etc/understudy, which holds a copy of config/.
    let config = understudy::Config::parse(&docker, &Path::new(ROOT).join("config")).unwrap();
    assert!(config.server.listen.ip().is_unspecified());
    assert!(config.admin.listen.ip().is_unspecified());
    assert_eq!(
        image.exposed,
        [config.server.listen.port(), config.admin.listen.port()]
    );
    assert!(
        config.store.path.starts_with(&image.volume),
        "the store {:?} is not in the volume {}",
        config.store.path,
        image.volume
    );
    assert_eq!(image.workdir, image.volume);
    assert_eq!(image.config_in_image, "/etc/understudy/understudy.toml");
    let probe = image.healthcheck.join(" ");
    assert!(
        probe.contains(&format!("/127.0.0.1/{}", config.server.listen.port())),
        "the health check does not probe the proxy port: {probe}"
    );
}

/// How to run a command as root with namespaces here: directly or through `sudo -n`, if
/// `unshare --mount --net` works that way (a container without CAP_SYS_ADMIN cannot).
fn as_root() -> Option<Vec<&'static str>> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    let prefix = if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        Vec::new()
    } else {
        vec!["sudo", "-n"]
    };
    let probe = Command::new(prefix.first().copied().unwrap_or("env"))
        .args(prefix.iter().skip(1))
        .args(["unshare", "--mount", "--net", "true"])
        .output()
        .ok()?;
    probe.status.success().then_some(prefix)
}

#[test]
fn the_image_serves_as_its_user_and_passes_its_health_check() {
    let image = read_image();
    let Some(prefix) = as_root() else {
        let msg = "tests/image.rs needs root (or passwordless sudo) allowed to make namespaces";
        assert!(
            std::env::var_os("UNDERSTUDY_REQUIRE_IMAGE_TEST").is_none(),
            "{msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let t = scratch.path().to_str().unwrap().to_string();
    let run_as = format!(
        "setpriv --reuid=\"$(id -u {u})\" --regid=\"$(id -g {u})\" --clear-groups --",
        u = quote(&image.user)
    );
    let command: Vec<String> = image.command.iter().map(|a| quote(a)).collect();
    let health: Vec<String> = image.healthcheck.iter().map(|a| quote(a)).collect();
    let script = format!(
        r#"set -eu
# The overlays' upper layers on a tmpfs: an overlay's upper layer cannot itself be an overlay
# (a /tmp inside a container).
mkdir -p "$T/ov" && mount -t tmpfs tmpfs "$T/ov"
for d in etc var; do mkdir -p "$T/ov/$d-up" "$T/ov/$d-work"; done
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/ov/etc-up,workdir=$T/ov/etc-work" /etc
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$T/ov/var-up,workdir=$T/ov/var-work" /var/lib
ip link set lo up
# An address other than loopback, as a container's interface is: the server must answer there.
ip addr add 192.0.2.10/32 dev lo
{setup}
cd {workdir}
[ "$(id -u {user})" != 0 ] || {{ echo "USER is root"; exit 1; }}
{run_as} env UNDERSTUDY_ADMIN_TOKEN=image-test-token OPENAI_API_KEY=sk-image-test ANTHROPIC_API_KEY=sk-ant-image-test RUST_LOG=info {command} 2>"$T/server.log" &
pid=$!
healthy=no
for i in $(seq 1 300); do
  if {run_as} {health}; then healthy=yes; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
echo "healthy=$healthy"
for port in {ports}; do
  echo "external $port: $(bash -c "exec 3<>/dev/tcp/192.0.2.10/$port && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && head -n 1 <&3" 2>&1)"
done
echo "store: $(stat -c '%U %a' {volume}/understudy.db 2>&1)"
echo "volume: $(stat -c '%U %a' {volume})"
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" && echo "exit=0" || echo "exit=$?"
cat "$T/server.log"
"#,
        setup = image.setup.join("\n"),
        workdir = quote(&image.workdir),
        user = quote(&image.user),
        volume = quote(&image.volume),
        command = command.join(" "),
        health = health.join(" "),
        ports = image
            .exposed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let out = Command::new(prefix.first().copied().unwrap_or("env"))
        .args(prefix.iter().skip(1))
        .args([
            "env",
            &format!("T={t}"),
            "unshare",
            "--mount",
            "--net",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "{said}");
    assert!(stdout.contains("healthy=yes"), "{said}");
    assert!(
        stdout.contains(&format!("store: {} 6", image.user)),
        "the store is not the user's: {said}"
    );
    assert!(stdout.contains("exit=0"), "{said}");
    for port in &image.exposed {
        assert!(
            stdout.contains(&format!("external {port}: HTTP/1.0 200")),
            "port {port} does not answer on a non-loopback address: {said}"
        );
    }
    assert!(
        stdout.contains("proxy=0.0.0.0:8080") && stdout.contains("admin=0.0.0.0:8081"),
        "{said}"
    );
    // Nothing leaked out of the namespace: the real /var/lib and /etc are untouched.
    assert!(!Path::new("/var/lib/understudy").exists());
    assert!(!Path::new("/etc/understudy").exists());
}
