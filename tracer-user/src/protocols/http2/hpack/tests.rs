//! RFC 7541 Appendix C examples and the partly-known-table behaviour.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn pairs(block: &DecodedBlock) -> Vec<(String, String)> {
    block
        .fields
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8(h.value.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The dynamic table as (name, value) pairs, newest first.
fn table(decoder: &Decoder) -> Vec<(String, String)> {
    (1..=decoder.table.len())
        .map(|i| {
            let (name, value) = decoder.table.get(i).unwrap().field.clone().unwrap();
            (name.to_string(), String::from_utf8(value.to_vec()).unwrap())
        })
        .collect()
}

const LIMIT: usize = 64 * 1024;

/// C.3 (raw) and C.4 (Huffman): three requests on one connection.
#[test]
fn appendix_c3_and_c4_requests() {
    let raw = [
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ];
    let huffman = [
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ];
    let expected: [&[(&str, &str)]; 3] = [
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ],
    ];
    let tables: [&[(&str, &str)]; 3] = [
        &[(":authority", "www.example.com")],
        &[
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ],
        &[
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ],
    ];
    let sizes = [57, 110, 164];
    for blocks in [raw, huffman] {
        let mut decoder = Decoder::new(LIMIT, true);
        for i in 0..3 {
            let block = decoder.decode(&hex(blocks[i]), LIMIT).unwrap();
            assert_eq!(pairs(&block), owned(expected[i]), "request {}", i + 1);
            assert_eq!((block.undecoded, block.truncated), (0, false));
            assert_eq!(table(&decoder), owned(tables[i]));
            assert_eq!(decoder.table.size(), sizes[i]);
        }
    }
}

/// C.5 (raw) and C.6 (Huffman): three responses with a 256-byte table, so entries are evicted.
#[test]
fn appendix_c5_and_c6_responses_with_eviction() {
    let raw = [
        "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
        "4803333037c1c0bf",
        "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31",
    ];
    let huffman = [
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        "4883640effc1c0bf",
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
    ];
    let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
    let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
    let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    let location = "https://www.example.com";
    let expected: [Vec<(&str, &str)>; 3] = [
        vec![
            (":status", "302"),
            ("cache-control", "private"),
            ("date", date1),
            ("location", location),
        ],
        vec![
            (":status", "307"),
            ("cache-control", "private"),
            ("date", date1),
            ("location", location),
        ],
        vec![
            (":status", "200"),
            ("cache-control", "private"),
            ("date", date2),
            ("location", location),
            ("content-encoding", "gzip"),
            ("set-cookie", cookie),
        ],
    ];
    let tables: [Vec<(&str, &str)>; 3] = [
        vec![
            ("location", location),
            ("date", date1),
            ("cache-control", "private"),
            (":status", "302"),
        ],
        vec![
            (":status", "307"),
            ("location", location),
            ("date", date1),
            ("cache-control", "private"),
        ],
        vec![
            ("set-cookie", cookie),
            ("content-encoding", "gzip"),
            ("date", date2),
        ],
    ];
    let sizes = [222, 222, 215];
    for blocks in [raw, huffman] {
        let mut decoder = Decoder::new(LIMIT, true);
        decoder.table.resize(256);
        for i in 0..3 {
            let block = decoder.decode(&hex(blocks[i]), LIMIT).unwrap();
            assert_eq!(pairs(&block), owned(&expected[i]), "response {}", i + 1);
            assert_eq!(table(&decoder), owned(&tables[i]));
            assert_eq!(decoder.table.size(), sizes[i]);
        }
    }
}

/// A decoder that never saw the connection's earlier blocks: static fields and literals decode,
/// dynamic references it does not hold are counted, and inserts it sees are placed exactly.
#[test]
fn adopted_mid_stream_decodes_static_fields_and_counts_the_rest() {
    let mut decoder = Decoder::new(LIMIT, false);
    assert!(!decoder.table_known());
    // :method GET, :scheme http, :path /, then dynamic 62 (never seen), then a literal with
    // indexing "custom-key: custom-value" (Huffman), then dynamic 62 again: now the new entry.
    let block = hex("828684be408825a849e95ba97d7f8925a849e95bb8e8b4bfbe");
    let decoded = decoder.decode(&block, LIMIT).unwrap();
    assert_eq!(
        pairs(&decoded),
        owned(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("custom-key", "custom-value"),
            ("custom-key", "custom-value"),
        ])
    );
    assert_eq!(decoded.undecoded, 1);
    // Index 63 would be older than anything seen: counted, never guessed.
    let decoded = decoder.decode(&hex("88bf"), LIMIT).unwrap();
    assert_eq!(pairs(&decoded), owned(&[(":status", "200")]));
    assert_eq!(decoded.undecoded, 1);
    assert!(!decoder.table_known());
    // A size update to 0 empties the table on both sides: the table is whole again.
    decoder
        .decode(&hex("203f e11f".replace(' ', "").as_str()), LIMIT)
        .unwrap();
    assert!(decoder.table_known());
}

#[test]
fn a_lost_block_forgets_older_entries_but_places_new_ones() {
    let mut decoder = Decoder::new(LIMIT, true);
    decoder
        .decode(&hex("828684410f7777772e6578616d706c652e636f6d"), LIMIT)
        .unwrap();
    decoder.lose_track();
    assert!(!decoder.table_known());
    // be = 62: the :authority entry was forgotten.
    let decoded = decoder.decode(&hex("be"), LIMIT).unwrap();
    assert_eq!((decoded.fields.len(), decoded.undecoded), (0, 1));
    // A new insert is entry 62, and is found.
    let decoded = decoder
        .decode(&hex("58086e6f2d6361636865be"), LIMIT)
        .unwrap();
    assert_eq!(
        pairs(&decoded),
        owned(&[("cache-control", "no-cache"), ("cache-control", "no-cache")])
    );
}

#[test]
fn undecodable_fields_insert_placeholders_that_keep_later_indices_right() {
    let mut decoder = Decoder::new(LIMIT, false);
    // Literal with indexing, name = dynamic 70 (unknown), value "x": a placeholder at 62.
    // Then a literal with indexing "a: b" at 62 (placeholder moves to 63); then 62 and 63.
    let block = hex("7f0701784001610162bebf");
    let decoded = decoder.decode(&block, LIMIT).unwrap();
    assert_eq!(pairs(&decoded), owned(&[("a", "b"), ("a", "b")]));
    assert_eq!(decoded.undecoded, 2);
}

#[test]
fn the_list_bound_truncates_but_the_table_follows() {
    let mut decoder = Decoder::new(LIMIT, true);
    // Bound leaves room for :method GET (42) and :scheme http (43), not :path / (38 more).
    let decoded = decoder
        .decode(&hex("828684410f7777772e6578616d706c652e636f6d"), 90)
        .unwrap();
    assert_eq!(
        pairs(&decoded),
        owned(&[(":method", "GET"), (":scheme", "http")])
    );
    assert!(decoded.truncated);
    // The dropped literal was still inserted.
    assert_eq!(table(&decoder), owned(&[(":authority", "www.example.com")]));
}

#[test]
fn malformed_blocks_are_errors_not_panics() {
    let mut decoder = Decoder::new(LIMIT, true);
    assert_eq!(decoder.decode(&[0x80], LIMIT), Err(BlockError::ZeroIndex));
    assert_eq!(decoder.decode(&[0xff], LIMIT), Err(BlockError::Truncated));
    assert_eq!(
        decoder.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], LIMIT),
        Err(BlockError::IntegerOverflow)
    );
    assert_eq!(
        decoder.decode(&[0x00, 0x05, b'a'], LIMIT),
        Err(BlockError::Truncated)
    );
    // A string length near u32::MAX with few bytes behind it: no allocation, an error.
    assert_eq!(
        decoder.decode(&[0x00, 0x7f, 0xff, 0xff, 0xff, 0x0f], LIMIT),
        Err(BlockError::Truncated)
    );
    // Bad Huffman in a value: that field is undecoded, the block goes on.
    let decoded = decoder.decode(&hex("000161810082"), LIMIT).unwrap();
    assert_eq!(pairs(&decoded), owned(&[(":method", "GET")]));
    assert_eq!(decoded.undecoded, 1);
}

#[test]
fn a_size_update_above_our_bound_is_capped() {
    let mut decoder = Decoder::new(100, true);
    // Size update to 1 MiB (3f e1 ff 3f), then two inserts of 34 bytes and one of 34.
    let decoded = decoder
        .decode(
            &hex("3fe1ff3f4001610131400162013240016301 33"
                .replace(' ', "")
                .as_str()),
            LIMIT,
        )
        .unwrap();
    assert_eq!(decoded.fields.len(), 3);
    assert!(decoder.table.size() <= 100);
    assert_eq!(table(&decoder), owned(&[("c", "3"), ("b", "2")]));
}

#[test]
fn names_are_static_when_known() {
    let mut decoder = Decoder::new(LIMIT, true);
    // Literal without indexing, new name "grpc-status" = "0".
    let mut block = vec![0x00, 11];
    block.extend_from_slice(b"grpc-status");
    block.extend_from_slice(&[1, b'0']);
    let decoded = decoder.decode(&block, LIMIT).unwrap();
    assert!(matches!(
        decoded.fields[0].name,
        Text::Static("grpc-status")
    ));
    assert_eq!(decoded.fields[0].value, "0");
}

#[test]
fn the_fuzz_harness_accepts_rfc_blocks() {
    let mut script = vec![1u8];
    for block in [
        "828684410f7777772e6578616d706c652e636f6d",
        "828684be58086e6f2d6361636865",
        "ff",
        "be",
    ] {
        let block = hex(block);
        script.push(block.len() as u8);
        script.extend_from_slice(&block);
    }
    fuzz_entry(&script);
    script[0] = 2;
    fuzz_entry(&script);
    fuzz_entry(&[]);
}
