//! A DNS server on the host's loopback for network tests: fixed names to fixed addresses.
#![allow(clippy::unwrap_used)] // test helper: a failure here is a broken test set-up

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::UdpSocket;

/// A DNS server on `127.53.x.y:53` answering A and AAAA queries from a fixed table.
pub async fn dns_server(table: HashMap<String, Vec<IpAddr>>) -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let socket = loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() % 200 * 250;
        let ip = Ipv4Addr::new(127, 53, u8::try_from(n / 250 % 250).unwrap(), u8::try_from(n % 250 + 1).unwrap());
        if let Ok(s) = UdpSocket::bind((ip, 53)).await {
            break s;
        }
    };
    let addr = socket.local_addr().unwrap().ip();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if let Some(answer) = dns_answer(&buf[..n], &table) {
                let _ = socket.send_to(&answer, from).await;
            }
        }
    });
    addr
}

fn dns_answer(q: &[u8], table: &HashMap<String, Vec<IpAddr>>) -> Option<Vec<u8>> {
    let mut i = 12;
    let mut labels = Vec::new();
    while *q.get(i)? != 0 {
        let len = usize::from(q[i]);
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).to_ascii_lowercase());
        i += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question = &q[12..i + 5];
    let found = table.get(&labels.join("."));
    let answers: Vec<&IpAddr> = found
        .map(|ips| ips.iter().filter(|ip| (qtype == 1 && ip.is_ipv4()) || (qtype == 28 && ip.is_ipv6())).collect())
        .unwrap_or_default();
    let mut r = Vec::new();
    r.extend_from_slice(&q[..2]);
    r.extend_from_slice(&[0x81, if found.is_some() { 0x80 } else { 0x83 }]);
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&u16::try_from(answers.len()).unwrap().to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for ip in answers {
        r.extend_from_slice(&[0xc0, 0x0c]);
        let (kind, data) = match ip {
            IpAddr::V4(v4) => (1u16, v4.octets().to_vec()),
            IpAddr::V6(v6) => (28u16, v6.octets().to_vec()),
        };
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 5]);
        r.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}
