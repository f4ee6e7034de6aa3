//! The captured rpcx-over-KCP session (tests/data/kcp-go-datagrams.json: Go rpcx client and
//! server, kcp-go v5.4.20, 12 `Arith.Mul` calls), loaded for the layers' unit tests.

use serde_json::Value;

pub struct Datagram {
    pub index: usize,
    /// true: client to server.
    pub c2s: bool,
    pub ciphertext: Vec<u8>,
    pub plaintext: Vec<u8>,
    pub seqid: u32,
    pub parity: bool,
}

pub struct Group {
    pub c2s: bool,
    pub seqid_first: u32,
    pub data: Vec<usize>,
    pub parity: Vec<usize>,
}

pub struct Capture {
    pub key: Vec<u8>,
    pub parity_rows: Vec<Vec<u8>>,
    pub datagrams: Vec<Datagram>,
    pub groups: Vec<Group>,
    /// The rpcx frames of each direction, in order: (client to server, server to client).
    pub frames_c2s: Vec<Vec<u8>>,
    pub frames_s2c: Vec<Vec<u8>>,
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

impl Capture {
    pub fn load() -> Capture {
        let v: Value =
            serde_json::from_str(include_str!("../../../tests/data/kcp-go-datagrams.json"))
                .unwrap();
        let datagrams = v["datagrams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| Datagram {
                index: d["index"].as_u64().unwrap() as usize,
                c2s: text(&d["direction"]) == "c2s",
                ciphertext: unhex(text(&d["ciphertext_hex"])),
                plaintext: unhex(text(&d["plaintext_hex"])),
                seqid: d["fec_seqid"].as_u64().unwrap() as u32,
                parity: text(&d["fec_type_name"]) == "parity",
            })
            .collect();
        let groups = v["fec_groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| Group {
                c2s: text(&g["direction"]) == "c2s",
                seqid_first: g["seqid_first"].as_u64().unwrap() as u32,
                data: indices(&g["data_datagrams"]),
                parity: indices(&g["parity_datagrams"]),
            })
            .collect();
        let frames = |dir: &str| {
            v["rpcx_streams"][dir]["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| unhex(text(&f["hex"])))
                .collect()
        };
        Capture {
            key: unhex(text(&v["key_hex"])),
            parity_rows: v["reed_solomon"]["parity_rows_hex"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| unhex(text(r)))
                .collect(),
            datagrams,
            groups,
            frames_c2s: frames("c2s"),
            frames_s2c: frames("s2c"),
        }
    }
}
