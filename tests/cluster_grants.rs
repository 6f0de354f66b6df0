//! Grants on a cluster: directories a host's operator allowed (`wasmpool worker
//! --allow-dir`) and environment variables travel with a pool's chunks; a directory a host
//! does not allow fails the chunk with a clear error, and nothing else is reachable.

use std::time::Duration;

use wasmpool::cluster::ClusterPool;
use wasmpool::{Grants, Pool};

use crate::cluster::redis::RedisServer;
use crate::cluster::{WorkerHost, cli_on_cluster, wait_for_hosts};
use crate::util::{TempDir, assert_granted_and_nothing_else, testkit, within};

fn granted_pool(redis: &RedisServer, grants: Grants) -> ClusterPool {
    Pool::builder(&testkit())
        .grants(grants)
        .cluster(&redis.url())
        .build()
        .expect("a cluster pool")
}

#[test]
fn a_cluster_pool_reaches_the_directories_its_hosts_allow_and_nothing_else() {
    within(Duration::from_secs(300), || {
        testkit();
        let ro = TempDir::new("cluster-grant-ro");
        let rw = TempDir::new("cluster-grant-rw");
        let other = TempDir::new("cluster-grant-other");
        std::fs::write(ro.0.join("hello.txt"), "hello from the host").unwrap();
        std::fs::write(other.0.join("secret.txt"), "not for tasks").unwrap();
        std::fs::create_dir_all(rw.0.join("sub")).unwrap();
        let redis = RedisServer::start();
        let allow_ro = format!("{}:ro", ro.0.display());
        let allow_rw = rw.0.display().to_string();
        let _host = WorkerHost::start_with(
            &redis,
            2,
            &["--allow-dir", &allow_ro, "--allow-dir", &allow_rw],
        );

        let pool = granted_pool(
            &redis,
            Grants::new()
                .dir_read_only(&ro.0, "/data")
                .dir(&rw.0, "/out")
                .env("GREETING", "hi"),
        );
        wait_for_hosts(&pool, 1);
        let read = |pool: &ClusterPool, path: &str| pool.apply::<_, String>("read_file", &(path,));
        assert_granted_and_nothing_else(
            &ro.0,
            &rw.0,
            |path| read(&pool, path),
            |path| pool.apply("write_file", &(path, "written")),
            |name| pool.apply("env_var", &(name,)),
        );

        // A pool without grants reaches none of them.
        let plain = granted_pool(&redis, Grants::new());
        assert!(read(&plain, "/data/hello.txt").is_err());

        // A directory the host does not allow, one under an allowed one, and a read-write
        // grant of one allowed read-only: each chunk fails, saying why; the host goes on.
        let refused = [
            (
                Grants::new().dir_read_only(&other.0, "/d"),
                "does not allow",
            ),
            (
                Grants::new()
                    .dir_read_only(ro.0.join("."), "/d")
                    .dir_read_only(rw.0.join("sub"), "/e"),
                "does not allow",
            ),
            (Grants::new().dir(&ro.0, "/d"), "read-only"),
        ];
        for (grants, needle) in refused {
            let pool = granted_pool(&redis, grants.clone());
            let err = pool
                .apply::<_, String>("read_file", &("/d/secret.txt",))
                .expect_err("a refused grant fails the chunk");
            let text = err.to_string();
            assert!(text.contains(needle), "{grants:?}: {text}");
            assert!(!text.contains("not for tasks"), "{text}");
        }
        assert_eq!(
            read(&pool, "/data/hello.txt").unwrap(),
            "hello from the host"
        );

        // A relative host path names nothing on the hosts: refused before any chunk.
        let relative = Pool::builder(&testkit())
            .grants(Grants::new().dir_read_only("relative/dir", "/d"))
            .cluster(&redis.url())
            .build();
        let err = relative.expect_err("a relative directory on a cluster");
        assert!(err.to_string().contains("absolute path"), "{err}");
    });
}

#[test]
fn cli_run_on_a_cluster_carries_dir_and_env_as_a_local_run_does() {
    within(Duration::from_secs(300), || {
        testkit();
        let ro = TempDir::new("cluster-cli-grant");
        std::fs::write(ro.0.join("hello.txt"), "hello from the host").unwrap();
        let redis = RedisServer::start();
        let allow = format!("{}:ro", ro.0.display());
        let _host = WorkerHost::start_with(&redis, 1, &["--allow-dir", &allow]);
        let url = redis.url();
        wait_for_hosts(&granted_pool(&redis, Grants::new()), 1);
        let dir = format!("{}:/data:ro", ro.0.display());
        let run = |args: &[&str], url: Option<&str>| cli_on_cluster("run", args, url);

        for args in [
            &["read_file", "\"/data/hello.txt\"", "--dir", &dir][..],
            &["env_var", "\"GREETING\"", "--env", "GREETING=hey"],
        ] {
            let local = run(args, None);
            let remote = run(args, Some(&url));
            assert_eq!(remote, local, "run {args:?}: cluster, then local");
            assert_eq!(remote.0, Some(0), "{remote:?}");
        }
        assert_eq!(
            run(
                &["read_file", "\"/data/hello.txt\"", "--dir", &dir],
                Some(&url)
            )
            .1,
            "\"hello from the host\"\n"
        );
        // Read-write where the host allows read-only: the task fails, saying why.
        let rw = format!("{}:/data", ro.0.display());
        let out = run(
            &["read_file", "\"/data/hello.txt\"", "--dir", &rw],
            Some(&url),
        );
        assert_eq!(out.0, Some(1), "{out:?}");
        assert!(out.2.contains("read-only"), "{out:?}");
    });
}

#[test]
fn a_worker_refuses_to_start_with_an_allowed_directory_inside_a_read_write_one() {
    within(Duration::from_secs(60), || {
        let scratch = TempDir::new("cluster-allow-nested");
        let models = scratch.0.join("models");
        std::fs::create_dir_all(&models).unwrap();
        let redis = RedisServer::start();
        let (outer, inner) = (
            scratch.0.display().to_string(),
            format!("{}:ro", models.display()),
        );
        let out = crate::util::cli()
            .args(["worker", "--join", &redis.url(), "--slots", "1"])
            .args(["--allow-dir", &outer, "--allow-dir", &inner])
            .output()
            .unwrap();
        crate::util::assert_cli_error(&out, 2, "symbolic link");
    });
}
