//! `wasmpool run --cluster`: one task through a cluster's Redis, run by a real `wasmpool
//! worker --join` host, printing what a local `run` prints.

use std::time::Duration;

use crate::cluster::redis::RedisServer;
use crate::cluster::{WorkerHost, cli_on_cluster, cluster_pool, wait_for_hosts};
use crate::util::{assert_cli_error, cli, testkit, within};

#[test]
fn cli_run_on_a_cluster_prints_what_a_local_run_prints() {
    within(Duration::from_secs(300), || {
        testkit();
        let redis = RedisServer::start();
        let _host = WorkerHost::start(&redis, 2);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        let url = redis.url();
        let run = |args: &[&str], url: Option<&str>| cli_on_cluster("run", args, url);

        // The same stdout, the same last line of stderr (the error, or the fuel), the same
        // exit status, for a result, a record (its keys in the guest's order), task
        // failures, a panic, a trap, arguments the task refuses and an unknown task.
        let cases: &[&[&str]] = &[
            &["add", "40", "2"],
            &["scale", r#"{"y": 2, "x": 1.5}"#, "2"],
            &["fail", r#""no way""#],
            &["boom", r#""pop""#],
            &["trap"],
            &["square", r#""seven""#],
            &["square", "1", "2"],
            &["sqaure", "1"],
            &["add", "40", "2", "--show-fuel"],
            &["spin", "--fuel", "100000"],
        ];
        for args in cases {
            let local = run(args, None);
            let remote = run(args, Some(&url));
            assert_eq!(remote, local, "run {args:?}: cluster, then local");
        }
        // They are not all alike: each kind of ending was checked.
        assert_eq!(run(&["add", "40", "2"], Some(&url)).1, "42\n");
        assert_eq!(
            run(&["fail", r#""no way""#], Some(&url)),
            (
                Some(1),
                String::new(),
                "wasmpool: task `fail` failed: no way".into()
            )
        );
        // The task's own output goes to the host that ran it: stdout is the result only.
        let greet = run(&["greet", r#""eve""#], Some(&url));
        assert_eq!(greet.0, Some(0), "{greet:?}");
        assert_eq!(greet.1, "\"hello, eve\"\n");
        let bad = run(&["square", r#""seven""#], Some(&url));
        assert_eq!(bad.0, Some(2), "{bad:?}");
        assert!(bad.2.contains("expected u64, got a string"), "{bad:?}");
        let fuel = run(&["add", "40", "2", "--show-fuel"], Some(&url));
        assert!(
            fuel.2.contains("used") && fuel.2.contains("fuel"),
            "{fuel:?}"
        );

        // An object named on the command line lives in Redis, as with map --cluster.
        let out = run(
            &["atomic_increments", r#""@d""#, "50", "--object", "d=dict"],
            Some(&url),
        );
        assert_eq!(out.0, Some(0), "{out:?}");
        assert!(
            out.2.contains("[\"count\",50]"),
            "the dict's report: {out:?}"
        );
    });
}

#[test]
fn cli_run_on_a_cluster_refuses_what_a_cluster_cannot_honour_by_name() {
    within(Duration::from_secs(120), || {
        testkit();
        let redis = RedisServer::start();
        let url = redis.url();
        let cases: &[(&[&str], &str)] = &[
            (&["--dir", "tmp:/d"], "absolute path on its hosts"),
            (
                &["--tag-output"],
                "--tag-output is not supported with --cluster",
            ),
            (&["--name", "n"], "--name is not supported with --cluster"),
            (
                &["--server", "http://127.0.0.1:9"],
                "--cluster and --server cannot be used together",
            ),
        ];
        for (extra, needle) in cases {
            let out = cli()
                .args([
                    "run",
                    "examples/testkit",
                    "add",
                    "1",
                    "2",
                    "--cluster",
                    &url,
                ])
                .args(*extra)
                .output()
                .unwrap();
            assert_cli_error(&out, 2, needle);
        }
        // A tenant needs a cluster, and a name of its kind.
        let out = cli()
            .args(["run", "examples/testkit", "add", "1", "2", "--tenant", "a"])
            .output()
            .unwrap();
        assert_cli_error(&out, 2, "--cluster");
        let out = cli()
            .args([
                "run",
                "examples/testkit",
                "add",
                "1",
                "2",
                "--cluster",
                &url,
            ])
            .args(["--tenant", "a b"])
            .output()
            .unwrap();
        assert_cli_error(&out, 2, "not a tenant name");
    });
}
