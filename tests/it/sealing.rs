//! Secrets at rest (CONTRACT §8, §11): the database files are readable by their owner only.

use crate::cli::{run, wafer};
use crate::harness::Env;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The database and the -wal and -shm files beside it.
fn db_files(db: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        std::path::PathBuf::from(s)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

#[test]
fn the_database_files_are_created_owner_only() {
    let env = Env::new();
    env.login("files-0600");
    for f in db_files(&env.db_path()) {
        assert_eq!(mode(&f), 0o600, "{} while serving", f.display());
    }

    // The CLI creates its database the same way.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db");
    let (ok, _, err) = run(wafer()
        .args(["app", "add", "--appid", "wxseal0000000001", "--secret", "s"])
        .arg("--db")
        .arg(&db));
    assert!(ok, "{err}");
    assert_eq!(mode(&db), 0o600, "created by the CLI");
}

#[test]
fn an_existing_world_readable_database_is_tightened_at_start() {
    let mut env = Env::new();
    env.login("files-0644");
    for f in db_files(&env.db_path()) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    env.restart();
    env.login("files-0644-again");
    for f in db_files(&env.db_path()) {
        assert_eq!(mode(&f), 0o600, "{} after a restart", f.display());
    }
}
