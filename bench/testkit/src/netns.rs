//! A wire for benchmarks: two network namespaces made here (`gw` and `client`) joined by a
//! veth pair, with packet loss and a rate on it, so traffic crosses a lossy link instead of
//! loopback. Both namespaces (and the pair) are deleted on drop.
//!
//! Loss and rate come from `tc netem` where the kernel has it; a kernel without netem gets
//! the same loss from nftables (`numgen random` drops of incoming packets, a real loss in
//! flight for TCP and UDP alike) and the rate from `tbf`, without added delay. What was
//! used is in [`Wire::shaping`]. Needs root, `ip` and `tc` (iproute2) and, without netem,
//! `nft` (nftables).

use anyhow::{Context, Result, bail};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

/// Which end of the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The gateway's namespace.
    Gw,
    /// The client's namespace.
    Client,
}

/// The two namespaces and the link between them.
pub struct Wire {
    names: [String; 2],
    addrs: [IpAddr; 2],
    shaping: String,
}

fn run(args: &[&str]) -> Result<()> {
    run_stdin(args, "")
}

/// Runs `args` with `input` on its stdin; an error carries its stderr.
fn run_stdin(args: &[&str], input: &str) -> Result<()> {
    use std::io::Write;
    let (program, rest) = args.split_first().context("no command")?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Wire {
    /// Makes the namespaces and the link: `loss_pct` percent of packets lost in each
    /// direction, `rate_mbit` megabits per second each way, `delay_ms` added one-way delay
    /// (netem only).
    pub fn create(loss_pct: f64, rate_mbit: u32, delay_ms: u32) -> Result<Self> {
        let pid = std::process::id();
        let names = [format!("alkb{pid}g"), format!("alkb{pid}c")];
        let net = (pid % 250) as u8;
        let addrs = [
            IpAddr::V4(Ipv4Addr::new(10, 203, net, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 203, net, 2)),
        ];
        let mut wire = Self {
            names,
            addrs,
            shaping: String::new(),
        };
        wire.build(loss_pct, rate_mbit, delay_ms)?;
        Ok(wire)
    }

    fn build(&mut self, loss_pct: f64, rate_mbit: u32, delay_ms: u32) -> Result<()> {
        let [g, c] = &self.names;
        run(&["ip", "netns", "add", g])?;
        run(&["ip", "netns", "add", c])?;
        run(&[
            "ip", "link", "add", g, "netns", g, "type", "veth", "peer", "name", c, "netns", c,
        ])?;
        for (i, n) in self.names.iter().enumerate() {
            let cidr = format!("{}/24", self.addrs[i]);
            run(&["ip", "-n", n, "addr", "add", &cidr, "dev", n])?;
            run(&["ip", "-n", n, "link", "set", n, "up"])?;
            run(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        }
        let loss = format!("{loss_pct}%");
        let rate = format!("{rate_mbit}mbit");
        let delay = format!("{delay_ms}ms");
        let netem = self.names.iter().try_for_each(|n| {
            run(&[
                "ip", "netns", "exec", n, "tc", "qdisc", "add", "dev", n, "root", "netem", "loss",
                &loss, "delay", &delay, "rate", &rate,
            ])
        });
        if netem.is_ok() {
            self.shaping =
                format!("tc netem: loss {loss} delay {delay} rate {rate}, each direction");
            return Ok(());
        }
        let per_mille = (loss_pct * 10.0).round() as u32;
        for n in &self.names {
            let rules = format!(
                "table inet alkbench {{\n chain pre {{ type filter hook prerouting priority -300; policy accept; iifname \"{n}\" numgen random mod 1000 < {per_mille} drop; }}\n}}\n"
            );
            run_stdin(&["ip", "netns", "exec", n, "nft", "-f", "-"], &rules)
                .context("this kernel has no netem, and nftables failed too")?;
            run(&[
                "ip", "netns", "exec", n, "tc", "qdisc", "add", "dev", n, "root", "tbf", "rate",
                &rate, "burst", "64kb", "latency", "20ms",
            ])?;
        }
        self.shaping = format!(
            "nftables: {loss} of incoming packets dropped at random, tbf {rate} (queue up to 20 ms), each direction; no netem in this kernel, so no added delay"
        );
        Ok(())
    }

    /// The command prefix that runs a program on `side`: `ip netns exec NAME`.
    pub fn exec(&self, side: Side) -> [&str; 4] {
        ["ip", "netns", "exec", &self.names[side as usize]]
    }

    /// The address of `side` on the wire.
    pub fn addr(&self, side: Side) -> IpAddr {
        self.addrs[side as usize]
    }

    /// How loss and rate were made.
    pub fn shaping(&self) -> &str {
        &self.shaping
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = run(&["ip", "netns", "del", n]);
        }
    }
}
