//! The README's walkthrough with the real CLI (see `exe`): bad flags, keys create / validate /
//! list / revoke against a running server.

use std::process::Output;

use crate::exe;
use crate::helpers::TestServer;

fn run(s: &TestServer, args: &[&str]) -> Output {
    let (validator, admin) = (s.validator_addr.to_string(), s.admin_addr.to_string());
    let mut all = args.to_vec();
    all.extend([
        "--addr",
        &validator,
        "--admin-addr",
        &admin,
        "--data-dir",
        s.data_dir.to_str().unwrap(),
    ]);
    exe::output(exe::navis_auth(&all))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bad_config_exits_with_one_line_naming_the_flag() {
    for (args, flag) in [
        (vec!["serve", "--listen", "not-an-address"], "--listen"),
        (vec!["serve", "--store", "mongodb://x"], "--store"),
        (vec!["serve", "--cache-capacity", "0"], "--cache-capacity"),
        (
            vec!["serve", "--shutdown-grace", "soon"],
            "--shutdown-grace",
        ),
    ] {
        let out = exe::output(exe::navis_auth(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough() {
    let s = TestServer::start().await;
    let created = run(
        &s,
        &[
            "keys",
            "create",
            "--subject",
            "alice",
            "--scopes",
            "mcp:read",
            "--name",
            "laptop",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let key = stdout(&created).trim().to_owned();
    assert!(key.starts_with("nops_") && key.len() == 43, "{key}");

    let forbidden = run(&s, &["validate", &key, "--scope", "mcp:write"]);
    assert_eq!(forbidden.status.code(), Some(1));
    let text = stdout(&forbidden);
    assert!(text.contains("FORBIDDEN"), "{text}");
    assert!(
        text.contains(r#"WWW-Authenticate:  Bearer error="insufficient_scope", scope="mcp:write""#),
        "{text}"
    );

    let allowed = run(&s, &["validate", &key, "--scope", "mcp:read"]);
    assert_eq!(allowed.status.code(), Some(0));
    assert!(stdout(&allowed).contains("ALLOW"));

    let list = run(&s, &["keys", "list", "--subject", "alice"]);
    let text = stdout(&list);
    assert!(list.status.success());
    for col in [
        "TOKEN ID",
        "NAME",
        "SCOPES",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "laptop",
        "mcp:read",
    ] {
        assert!(text.contains(col), "{col} in {text}");
    }
    assert!(!text.contains(&key[5..]), "no secret in the listing");
    let token_id = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(token_id.starts_with("tok_"));

    let revoked = run(&s, &["keys", "revoke", &token_id]);
    assert!(revoked.status.success(), "{revoked:?}");
    let after = run(&s, &["validate", &key]);
    assert_eq!(after.status.code(), Some(1));
    assert!(stdout(&after).contains("UNAUTHENTICATED"));

    // A wrong admin token is refused.
    let wrong = run(
        &s,
        &[
            "keys",
            "list",
            "--subject",
            "alice",
            "--admin-token",
            "nadm_wrongwrongwrongwrong",
        ],
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("Unauthenticated"));
}
