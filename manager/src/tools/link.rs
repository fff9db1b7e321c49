//! `shoal link`: a TCP relay that delays what crosses it, standing in for a station's network in
//! benchmarks on a kernel without `netem`. It listens on one address and relays each connection
//! to another, holding every segment for the link's one-way delay (with jitter), in order, and
//! holding the stream up by a retransmission time for each segment the link "loses", which is
//! what TCP makes of a lost packet. The rate is left to `tc tbf` on the interfaces.
//!
//! What it does not model: the congestion window's reaction to loss (TCP halves its window;
//! here only the lost segment's stream waits), reordering (a TCP receiver hides it but for the
//! wait, which the jitter's in-order hold gives), a shared medium (Wi-Fi's stations share one
//! channel's airtime; here every link has its own rate), and delay on connections not made
//! through the relay.

use anyhow::{anyhow, bail, Context, Result};
use shoal_common::rng::{philox4x32_10, unit_open};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A link's behaviour, one way; both directions of a connection see the same.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    /// One-way delay.
    pub delay: Duration,
    /// Each segment's delay is drawn uniformly within `delay ± jitter`.
    pub jitter: Duration,
    /// The chance that a segment is lost, in [0, 1).
    pub loss: f64,
}

/// A TCP segment's payload on an Ethernet link (1500-byte MTU less IP and TCP headers with
/// timestamps): the unit that is delayed and lost.
const SEGMENT: usize = 1448;

impl Profile {
    /// `lan`: 0.2 ms each way (switched gigabit Ethernet); `wifi`: 3 ms ± 1 ms and 0.1 % loss
    /// (a busy 2.4 GHz channel); `none`: nothing, a relay for comparison.
    pub fn named(name: &str) -> Result<Profile> {
        let ms = |x: f64| Duration::from_secs_f64(x / 1000.0);
        Ok(match name {
            "lan" => Profile {
                delay: ms(0.2),
                jitter: Duration::ZERO,
                loss: 0.0,
            },
            "wifi" => Profile {
                delay: ms(3.0),
                jitter: ms(1.0),
                loss: 0.001,
            },
            "none" => Profile {
                delay: Duration::ZERO,
                jitter: Duration::ZERO,
                loss: 0.0,
            },
            other => bail!("link profile `{other}`: use lan, wifi or none"),
        })
    }

    fn check(&self) -> Result<()> {
        if self.delay > Duration::from_secs(10) {
            bail!("--delay-ms {:?}: 10 s at most", self.delay);
        }
        if !(0.0..1.0).contains(&self.loss) {
            bail!("--loss {}: a chance in [0, 1)", self.loss);
        }
        if self.jitter > self.delay {
            bail!(
                "--jitter {:?} exceeds --delay {:?}: a delay cannot be negative",
                self.jitter,
                self.delay
            );
        }
        Ok(())
    }

    /// How long TCP takes to resend a lost segment that nothing follows closely: its tail loss
    /// probe, twice the round trip, and 10 ms at least (Linux's floor for it).
    pub fn resend(&self) -> Duration {
        (self.delay * 4).max(Duration::from_millis(10))
    }
}

/// The relay's draws: the project's Philox, keyed by the connection's seed, counted by draw.
struct Draw {
    key: [u32; 2],
    n: u64,
}

impl Draw {
    fn new(seed: u64) -> Draw {
        Draw {
            key: [seed as u32, (seed >> 32) as u32],
            n: 0,
        }
    }
    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        let bits = philox4x32_10([self.n as u32, (self.n >> 32) as u32, 0, 0], self.key);
        self.n += 1;
        unit_open(bits[0])
    }
}

/// When each segment of one direction of a connection arrives: its delay drawn, a loss's
/// resend added, and never before the segment ahead of it (a TCP stream is delivered in order).
struct Clock {
    profile: Profile,
    draw: Draw,
    last: Instant,
}

impl Clock {
    fn arrival(&mut self, sent: Instant) -> Instant {
        let p = &self.profile;
        let mut d = p.delay.as_secs_f64();
        if !p.jitter.is_zero() {
            d += p.jitter.as_secs_f64() * (2.0 * self.draw.unit() - 1.0);
        }
        let mut at = sent + Duration::from_secs_f64(d.max(0.0));
        if p.loss > 0.0 && self.draw.unit() < p.loss {
            at += p.resend();
        }
        self.last = self.last.max(at);
        self.last
    }
}

/// Relays every connection to `listen` on to `to` through the profile, until the process is
/// stopped. Prints one line when it listens.
pub fn serve(listen: &str, to: &str, profile: Profile, seed: u64) -> Result<()> {
    profile.check()?;
    let to: SocketAddr = to
        .parse()
        .with_context(|| format!("--to `{to}`: an address and port, like 127.0.0.1:7447"))?;
    let listener =
        TcpListener::bind(listen).with_context(|| format!("--listen `{listen}`: binding"))?;
    eprintln!(
        "link: {} -> {to}, {:?} ± {:?} each way, {} % loss (a lost segment waits {:?})",
        listener.local_addr()?,
        profile.delay,
        profile.jitter,
        profile.loss * 100.0,
        profile.resend()
    );
    for (n, conn) in listener.incoming().enumerate() {
        let Ok(from) = conn else { continue };
        let seed = seed ^ (n as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
        std::thread::Builder::new()
            .name(format!("link-{n}"))
            .spawn(move || {
                if let Err(e) = relay(from, to, profile, seed) {
                    eprintln!("link: connection {n}: {e:#}");
                }
            })?;
    }
    Ok(())
}

/// One connection: dials `to` (for up to 10 s, as the far end may still be starting) and pumps
/// each direction through its own clock.
fn relay(from: TcpStream, to: SocketAddr, profile: Profile, seed: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let dialled = loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!("dialling {to} for 10 s: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    // zenoh sends a keep-alive several times a lease (10 s): a minute of silence is a peer
    // gone without a word (a power cut), and the connection ends instead of waiting on.
    for s in [&from, &dialled] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
    }
    let back = {
        let (src, dst) = (dialled.try_clone()?, from.try_clone()?);
        std::thread::Builder::new()
            .name("link-back".into())
            .spawn(move || pump(src, dst, profile, seed ^ 0x5555))?
    };
    let there = pump(from, dialled, profile, seed);
    let back = back
        .join()
        .map_err(|_| anyhow!("the return pump panicked"))?;
    there.and(back)
}

/// Carries `src` to `dst`: a reader stamps each segment with its arrival and queues it; this
/// thread writes each at its time, what is due together in one write. The end of `src` ends
/// `dst`'s writing side once everything before it is delivered; a failed write ends both.
fn pump(src: TcpStream, mut dst: TcpStream, profile: Profile, seed: u64) -> Result<()> {
    // Bounded, so a sender faster than the far side's rate feels it, as on a real link: 4096
    // segments, 6 MB, more than a second of a 50 Mbit/s link.
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(4096);
    let mut reader_src = src.try_clone()?;
    let reader = std::thread::Builder::new()
        .name("link-read".into())
        .spawn(move || {
            let mut clock = Clock {
                profile,
                draw: Draw::new(seed),
                last: Instant::now(),
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match reader_src.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let now = Instant::now();
                for seg in buf[..n].chunks(SEGMENT) {
                    if tx.send((clock.arrival(now), seg.to_vec())).is_err() {
                        return;
                    }
                }
            }
        })?;
    let mut out = Vec::new();
    let result = loop {
        let Ok((at, seg)) = rx.recv() else {
            break Ok(());
        };
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        out.clear();
        out.extend_from_slice(&seg);
        // Whatever else is already due goes in the same write.
        let now = Instant::now();
        while let Ok((at, seg)) = rx.try_recv() {
            if at > now {
                if at - now > Duration::from_micros(50) {
                    std::thread::sleep(at - now);
                }
                out.extend_from_slice(&seg);
                break;
            }
            out.extend_from_slice(&seg);
        }
        if let Err(e) = dst.write_all(&out) {
            break Err(anyhow!("writing: {e}"));
        }
    };
    let _ = dst.shutdown(Shutdown::Write);
    if result.is_err() {
        let _ = src.shutdown(Shutdown::Both);
    }
    let _ = reader.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real relay on loopback: an echo server behind it, each byte back in order, and a round
    /// trip that takes at least the profile's two delays.
    #[test]
    fn a_relay_delays_each_way_and_keeps_every_byte_in_order() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for s in echo.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut s);
                });
            }
        });
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap().to_string();
        drop(probe);
        let profile = Profile {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            loss: 0.01,
        };
        let l = listen.clone();
        std::thread::spawn(move || serve(&l, &to, profile, 7));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match TcpStream::connect(&listen) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("no relay: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Small messages, one round trip each, then a burst of 1 MB.
        for k in 0..5u8 {
            let t = Instant::now();
            s.write_all(&[k; 10]).unwrap();
            let mut b = [0u8; 10];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b, [k; 10]);
            let rtt = t.elapsed();
            assert!(rtt >= Duration::from_millis(30), "round trip {rtt:?}");
        }
        let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = s.try_clone().unwrap();
        let data = sent.clone();
        let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
        let mut got = vec![0u8; sent.len()];
        s.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == sent, "bytes lost or out of order");
    }

    #[test]
    fn profiles_are_named_and_bad_ones_refused() {
        let wifi = Profile::named("wifi").unwrap();
        assert_eq!(wifi.delay, Duration::from_millis(3));
        assert_eq!(wifi.resend(), Duration::from_millis(12));
        assert_eq!(
            Profile::named("lan").unwrap().resend(),
            Duration::from_millis(10)
        );
        assert!(Profile::named("dsl")
            .unwrap_err()
            .to_string()
            .contains("dsl"));
        let bad = Profile { loss: 1.0, ..wifi };
        assert!(bad.check().unwrap_err().to_string().contains("--loss"));
    }
}
