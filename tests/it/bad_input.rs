//! G5: bad input gets a clear UNAUTHENTICATED or INVALID_ARGUMENT, never a panic, and never a
//! store call.

use navis_auth::pb::{self, Decision};
use tonic::Code;

use crate::helpers::{TestServer, decision, req};

fn raw(token: Vec<u8>) -> pb::ValidateRequest {
    pb::ValidateRequest {
        token,
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_credentials_are_refused_without_touching_the_store() {
    let s = TestServer::start().await;
    let (key, _) = s.create_key("alice", &["mcp:read"]).await;
    let before = s.calls.gets();

    // Unauthenticated, with the reason in error_description.
    let unauthenticated: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], ""),
        ("spaces", b"   ".to_vec(), ""),
        ("scheme only", b"Bearer".to_vec(), ""),
        ("scheme and spaces", b"Bearer    ".to_vec(), ""),
        ("basic scheme", b"Basic YWxpY2U6c2VjcmV0".to_vec(), ""),
        ("short", b"nops_abc".to_vec(), "invalid_token"),
        (
            "non-ascii",
            format!("nops_{}é", &key[5..41]).into_bytes(),
            "invalid_token",
        ),
        (
            "nul",
            {
                let mut k = key.clone().into_bytes();
                k[20] = 0;
                k
            },
            "invalid_token",
        ),
        (
            "invalid utf-8",
            {
                let mut k = key.clone().into_bytes();
                k[20] = 0xff;
                k
            },
            "invalid_token",
        ),
        (
            "lone continuation",
            {
                let mut k = key.clone().into_bytes();
                k[30] = 0x80;
                k
            },
            "invalid_token",
        ),
        (
            "wrong prefix",
            format!("nopx_{}", &key[5..]).into_bytes(),
            "invalid_token",
        ),
        (
            "two tokens",
            format!("Bearer {key} {key}").into_bytes(),
            "invalid_token",
        ),
        (
            "token with inner space",
            format!("{} {}", &key[..20], &key[20..]).into_bytes(),
            "",
        ),
        ("4 KiB of junk", vec![b'x'; 4096], "invalid_token"),
    ];
    for (name, token, error) in unauthenticated {
        let r = s
            .check_req(raw(token))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(decision(&r), Decision::Unauthenticated, "{name}");
        assert_eq!(r.error, error, "{name}");
        assert!(r.www_authenticate.starts_with("Bearer"), "{name}");
        assert!(!r.error_description.is_empty(), "{name}");
    }

    // Oversized requests are INVALID_ARGUMENT.
    for (name, token) in [
        ("16 KiB", vec![b'a'; 16 * 1024]),
        ("1 MiB", vec![b'n'; 1024 * 1024]),
    ] {
        let e = s.check_req(raw(token)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}");
        assert!(e.message().contains("4096"), "{name}: {}", e.message());
    }
    // Malformed required scopes and resources are the caller's bug: INVALID_ARGUMENT.
    for bad in [
        pb::ValidateRequest {
            required_scopes: vec!["mcp read".into()],
            ..req(&key, &[])
        },
        pb::ValidateRequest {
            required_scopes: vec!["say \"hi\"".into()],
            ..req(&key, &[])
        },
        pb::ValidateRequest {
            required_scopes: vec![String::new()],
            ..req(&key, &[])
        },
        pb::ValidateRequest {
            required_scopes: vec!["s".into(); 65],
            ..req(&key, &[])
        },
        pb::ValidateRequest {
            resource: "r".repeat(3000),
            ..req(&key, &[])
        },
    ] {
        let e = s.check_req(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    assert_eq!(s.calls.gets(), before, "no bad input reached the store");

    // And the service still answers normally afterwards.
    assert_eq!(
        decision(&s.check(&key, &["mcp:read"]).await),
        Decision::Allow
    );
}

#[tokio::test]
async fn a_message_over_the_transport_limit_is_refused_cleanly() {
    let s = TestServer::start().await;
    let e = s
        .check_req(raw(vec![b'a'; 5 * 1024 * 1024]))
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert_ne!(e.code(), Code::Unknown);
    // The server is still up.
    assert_eq!(decision(&s.check("", &[]).await), Decision::Unauthenticated);
}
