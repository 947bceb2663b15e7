//! Consoles on the fixture guest: the serial console shared by several
//! WebSocket clients (output to all, input from each, history replayed to
//! a late one), the display over VNC through a WebSocket (a real RFB
//! handshake), and screenshots of it.

mod common;

use std::time::{Duration, Instant};

use common::{fixture_cmdline, guest_slot, Daemon, BOOT, READY};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const STEP: Duration = Duration::from_secs(60);

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

async fn connect(d: &Daemon, path: &str, protocol: Option<&str>) -> Result<Ws, u16> {
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let mut req = format!("ws://localhost{path}")
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, resp)) => {
            if let Some(p) = protocol {
                assert_eq!(resp.headers()["sec-websocket-protocol"], p);
            }
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{path}: {e}"),
    }
}

/// A console client: reads binary frames into `seen` until `want` shows.
struct Client {
    ws: Ws,
    seen: String,
}

impl Client {
    async fn until(&mut self, want: &str) {
        let deadline = tokio::time::Instant::now() + STEP;
        while !self.seen.replace('\r', "").contains(want) {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    self.seen.push_str(&String::from_utf8_lossy(&b))
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    panic!("closed ({f:?}) before {want:?}: {}", self.seen)
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("{other:?} before {want:?}: {}", self.seen),
                Err(_) => panic!("no {want:?} within {STEP:?}: {}", self.seen),
            }
        }
    }

    async fn send(&mut self, line: &str) {
        self.ws
            .send(Message::Binary(line.as_bytes().to_vec().into()))
            .await
            .unwrap();
    }
}

/// `sender` runs `echo hello-<n>`: both clients see the output and the
/// end marker. Answers the time from sending to the echo on the sender.
async fn exchange(sender: &mut Client, other: &mut Client, n: u32) -> Duration {
    let sent = Instant::now();
    sender.send(&format!("c{n} echo hello-{n}\n")).await;
    sender.until(&format!("hello-{n}\n")).await;
    let took = sent.elapsed();
    sender.until(&format!("LIBGO-DONE c{n} 0")).await;
    other.until(&format!("hello-{n}\n")).await;
    other.until(&format!("LIBGO-DONE c{n} 0")).await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serial_console_is_shared_by_websocket_clients() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    let vm = d.create_fixture_vm("serial", "").await;
    let id = vm["id"].as_str().unwrap().to_owned();
    assert_eq!(vm["display"], false);
    assert!(vm.get("screenshot").is_none(), "{vm}");
    let path = format!("/api/v1/vms/{id}/console");

    // Not running: 409 before any upgrade.
    assert_eq!(connect(&d, &path, None).await.err(), Some(409));
    let (code, _) = d.req("GET", &path, None).await;
    assert_eq!(code, 400, "a plain GET is not an upgrade");
    assert_eq!(
        connect(&d, &format!("{path}?type=telnet"), None)
            .await
            .err(),
        Some(400)
    );
    // No display: a VNC console is 409 whatever the status.
    assert_eq!(
        connect(&d, &format!("{path}?type=vnc"), None).await.err(),
        Some(409)
    );

    let (code, r) = d
        .req("POST", &format!("/api/v1/vms/{id}/start"), None)
        .await;
    assert_eq!(code, 200, "{r}");
    d.wait_marker(&id, READY, 1, BOOT).await;

    let mut a = Client {
        ws: connect(&d, &format!("{path}?type=serial"), None)
            .await
            .unwrap(),
        seen: String::new(),
    };
    let mut b = Client {
        ws: connect(&d, &path, None).await.unwrap(),
        seen: String::new(),
    };
    // Both joined after the boot: the history (the log's tail) has it.
    a.until(READY).await;
    b.until(READY).await;

    let mut round_trips = vec![exchange(&mut a, &mut b, 1).await];
    round_trips.push(exchange(&mut b, &mut a, 2).await);
    println!("console round trip (send -> echo seen) with two clients attached: {round_trips:?}");

    // A third client, later: the output so far is replayed to it.
    let mut c = Client {
        ws: connect(&d, &path, None).await.unwrap(),
        seen: String::new(),
    };
    c.until("hello-1\n").await;
    c.until("LIBGO-DONE c2 0").await;

    // When every client has left, the socket is free for others again.
    drop((a, b, c));
    let (rc, out) = d.guest_cmd(&id, "echo free", STEP).await;
    // (What the clients left unfinished on the line may come first.)
    assert_eq!((rc, out.trim()), (0, "free"));

    // A stopped VM: the clients attached are told, new ones get 409.
    let mut e = Client {
        ws: connect(&d, &path, None).await.unwrap(),
        seen: String::new(),
    };
    let (code, r) = d
        .req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
        .await;
    assert_eq!(code, 200, "{r}");
    let reason = loop {
        match tokio::time::timeout(STEP, e.ws.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert!(
        reason.as_deref().unwrap_or("").contains("stopped"),
        "{reason:?}"
    );
    assert_eq!(connect(&d, &path, None).await.err(), Some(409));
}

/// Width and height from a PNG's IHDR.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// Distinct pixel values of a PNG (up to a few).
fn distinct_pixels(png: &[u8]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples() * info.bit_depth as usize / 8;
    let mut seen = std::collections::HashSet::new();
    for p in buf[..info.buffer_size()].chunks(px.max(1)) {
        seen.insert(p.to_vec());
        if seen.len() > 4 {
            break;
        }
    }
    seen.len()
}

async fn read_exact(ws: &mut Ws, pending: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while pending.len() < n {
        match tokio::time::timeout(STEP, ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => pending.extend_from_slice(&b),
            Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    pending.drain(..n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_is_reached_over_vnc_and_shown_in_screenshots() {
    let _slot = guest_slot().await;
    let d = Daemon::start().await;
    // The kernel prints on the VGA console too; the markers stay on the
    // serial port, the last console given.
    let cmdline = format!("console=tty0 {}", fixture_cmdline());
    let (code, vm) = d
        .req(
            "POST",
            "/api/v1/vms",
            Some(json!({
                "name": "screen", "vcpus": 1, "memory": 128, "disk_size": 1,
                "base_image": "base.qcow2", "display": true,
                "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": cmdline},
            })),
        )
        .await;
    assert_eq!(code, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    assert_eq!(vm["display"], true);
    assert_eq!(vm["screenshot"], format!("/api/v1/vms/{id}/screenshot"));
    let shot = format!("/api/v1/vms/{id}/screenshot");
    let vnc = format!("/api/v1/vms/{id}/console?type=vnc");
    assert_eq!(d.req("GET", &shot, None).await.0, 409);
    assert_eq!(connect(&d, &vnc, Some("binary")).await.err(), Some(409));

    let (code, r) = d
        .req("POST", &format!("/api/v1/vms/{id}/start"), None)
        .await;
    assert_eq!(code, 200, "{r}");
    d.wait_marker(&id, READY, 1, BOOT).await;
    let (rc, _) = d
        .guest_cmd(&id, "echo libgo-on-screen > /dev/tty0", STEP)
        .await;
    assert_eq!(rc, 0);

    let started = Instant::now();
    let (status, headers, png) = d.raw("GET", &shot, None, &[]).await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/png");
    let (w, h) = png_size(&png);
    println!("screenshot: {w}x{h}, {} bytes, in {took:?}", png.len());
    assert!(distinct_pixels(&png) > 1, "the screen is blank ({w}x{h})");

    // RFB 3.8 through the WebSocket: version, security None, ClientInit,
    // ServerInit with the screen's size.
    let mut ws = connect(&d, &vnc, Some("binary")).await.unwrap();
    let mut pending = Vec::new();
    let version = read_exact(&mut ws, &mut pending, 12).await;
    assert_eq!(&version, b"RFB 003.008\n");
    ws.send(Message::Binary(version.into())).await.unwrap();
    let n = read_exact(&mut ws, &mut pending, 1).await[0] as usize;
    assert!(n > 0, "no security types");
    let types = read_exact(&mut ws, &mut pending, n).await;
    assert!(types.contains(&1), "{types:?}");
    ws.send(Message::Binary(vec![1u8].into())).await.unwrap();
    let result = read_exact(&mut ws, &mut pending, 4).await;
    assert_eq!(result, [0, 0, 0, 0]);
    ws.send(Message::Binary(vec![1u8].into())).await.unwrap();
    let init = read_exact(&mut ws, &mut pending, 24).await;
    let (fw, fh) = (
        u16::from_be_bytes([init[0], init[1]]) as u32,
        u16::from_be_bytes([init[2], init[3]]) as u32,
    );
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    let name = read_exact(&mut ws, &mut pending, name_len).await;
    println!(
        "VNC ServerInit: {fw}x{fh}, name {:?}",
        String::from_utf8_lossy(&name)
    );
    assert_eq!((fw, fh), (w, h), "the VNC framebuffer and the screenshot");
    drop(ws);

    let (code, _) = d
        .req("POST", &format!("/api/v1/vms/{id}/poweroff"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(d.req("GET", &shot, None).await.0, 409);
}
