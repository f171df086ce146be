//! The shared MySQL-compatible database (CONTRACT §10): start-up errors, and (on a real
//! MariaDB, `mysql::test_db`) several `wafer serve` instances behaving as one server.

use crate::cli::{run, wafer};

/// `wafer serve` on `url`: (exited with success, stderr).
fn serve_on(url: &str) -> (bool, String) {
    let (ok, _, err) = run(wafer()
        .arg("serve")
        .env("WAFER_DATABASE_URL", url)
        .env("WAFER_LISTEN", "127.0.0.1:0"));
    (ok, err)
}

#[test]
fn an_unreachable_database_or_a_bad_url_stops_the_start_naming_storage_url_without_the_password() {
    // Nothing listens on port 1 of loopback.
    for url in [
        "mysql://wafer:s3cret-pw@127.0.0.1:1/wafer",
        "mysql://wafer:s3cret-pw@127.0.0.1:notaport/wafer",
        "mysql://wafer:s3cret-pw@127.0.0.1:1/",
        "postgres://wafer:s3cret-pw@127.0.0.1/wafer",
    ] {
        let (ok, err) = serve_on(url);
        assert!(!ok, "{url}: started");
        assert!(err.contains("storage.url"), "{url}: {err}");
        assert!(
            !err.contains("s3cret-pw"),
            "{url}: the password is printed: {err}"
        );
    }
}

#[test]
fn wrong_credentials_stop_the_start_naming_storage_url_without_the_password() {
    let Some(db) = crate::mysql::test_db() else {
        return;
    };
    // The test database's URL with another password.
    let (head, tail) = db.url.split_once('@').unwrap();
    let user = head.rsplit_once(':').unwrap().0;
    let url = format!("{user}:not-the-pw-9f3@{tail}");
    let (ok, err) = serve_on(&url);
    assert!(!ok);
    assert!(err.contains("storage.url"), "{err}");
    assert!(err.contains("Access denied"), "{err}");
    assert!(
        !err.contains("not-the-pw-9f3"),
        "the password is printed: {err}"
    );
}
