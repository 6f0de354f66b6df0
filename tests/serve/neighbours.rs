//! `wasmpool serve` with a hostile tenant beside a quiet one, and usage that is exactly
//! the sum of a tenant's results.

use super::*;

#[test]
fn serve_a_hostile_tenant_gets_its_own_errors_and_a_quiet_one_completes_meanwhile() {
    within(Duration::from_secs(300), || {
        let hostile = T {
            name: "hostile",
            quotas: "running = 8\nmax_memory_mib = 512",
        };
        let quiet = T {
            name: "quiet",
            quotas: "running = 8",
        };
        let s = setup("serve-neighbours", &[hostile, quiet]);
        let (hostile, quiet) = (
            T {
                name: "hostile",
                quotas: "",
            },
            T {
                name: "quiet",
                quotas: "",
            },
        );
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&hostile);
        server.upload_testkit(&quiet);
        // Each misdeed twice: a loop past its time limit, a memory bomb past its memory
        // limit, an output flood past its output limit, a worker that kills itself, a trap.
        let misdeeds = [
            ("spin", json!([]), json!({"timeout_s": 1.0})),
            ("alloc_mib", json!([400]), json!({"memory_mib": 64})),
            ("print_mib", json!([64]), json!({"output_mib": 1})),
            ("exit_with", json!([3]), json!({})),
            ("trap", json!([]), json!({})),
        ];
        let mut bad = Vec::new();
        for _ in 0..2 {
            for (task, args, limits) in &misdeeds {
                let id = server.submit(
                    &hostile,
                    &json!({"module": module, "task": task, "args": args, "limits": limits}),
                );
                bad.push((*task, id));
            }
        }
        // The quiet tenant's tasks, submitted while the hostile ones run.
        let good: Vec<(i64, String)> = (0..40)
            .map(|i| {
                let id = server.submit(
                    &quiet,
                    &json!({"module": module, "task": "add", "args": [i, 1000]}),
                );
                (i, id)
            })
            .collect();
        for (i, id) in &good {
            let done = server.wait(&quiet, id);
            assert_eq!(done["result"], i + 1000, "{done}");
            assert!(done.get("error").is_none(), "{done}");
        }
        for (task, id) in &bad {
            let done = server.wait(&hostile, id);
            let code = done["error"]["code"].as_str().unwrap_or("");
            let expected: &[&str] = match *task {
                "spin" | "alloc_mib" | "print_mib" => &["limit_exceeded"],
                "exit_with" => &["worker_lost", "task_failed"],
                _ => &["trap"],
            };
            assert!(expected.contains(&code), "{task}: {done}");
        }
        // And the quiet tenant saw none of it.
        let usage: Value = server.get(&quiet, "/v1/usage").json().unwrap();
        assert_eq!(usage["totals"]["tasks"], 40);
        assert_eq!(usage["totals"]["failed"], 0);
        drop(s.dir);
    });
}

#[test]
fn serve_usage_is_exactly_the_sum_over_the_tenants_results() {
    within(Duration::from_secs(300), || {
        let s = setup("serve-usage", &[A, B]);
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&A);
        // Tasks that succeed, fail, trap and time out, and a map with a failing item.
        let bodies = [
            json!({"module": module, "task": "add", "args": [1, 2]}),
            json!({"module": module, "task": "greet", "args": ["a longer name than most"]}),
            json!({"module": module, "task": "sleep_ms", "args": [30]}),
            json!({"module": module, "task": "big_result", "args": [5000]}),
            json!({"module": module, "task": "fail", "args": ["no"]}),
            json!({"module": module, "task": "trap"}),
            json!({"module": module, "task": "spin", "limits": {"timeout_s": 0.5}}),
        ];
        let ids: Vec<String> = bodies.iter().map(|b| server.submit(&A, b)).collect();
        let results: Vec<Value> = ids.iter().map(|id| server.wait(&A, id)).collect();
        let items = [json!(3), json!(13), json!(5), json!(12345)];
        let r = server.post_json(
            &A,
            "/v1/maps",
            &json!({"module": module, "task": "square_or_panic", "items": items, "chunksize": 2}),
        );
        let map: Value = r.json().unwrap();
        let mut records = String::new();
        server
            .get(
                &A,
                &format!("/v1/maps/{}/results", map["id"].as_str().unwrap()),
            )
            .read_to_string(&mut records)
            .unwrap();
        let records: Vec<&str> = records.lines().collect();
        assert_eq!(records.len(), items.len());

        // What the results say, summed.
        let (mut tasks, mut failed, mut wall, mut bytes_in, mut bytes_out) = (0u64, 0, 0, 0, 0);
        let mut cpu: Option<u64> = None;
        for r in &results {
            let u = &r["usage"];
            tasks += 1;
            failed += u64::from(r.get("error").is_some());
            wall += u["wall_ms"].as_u64().unwrap();
            bytes_in += u["bytes_in"].as_u64().unwrap();
            bytes_out += u["bytes_out"].as_u64().unwrap();
            if let Some(c) = u.get("cpu_ms").and_then(Value::as_u64) {
                *cpu.get_or_insert(0) += c;
            }
        }
        // A map item is metered by its input (compact JSON) and its record line.
        for (line, input) in records.iter().zip(&items) {
            let record: Value = serde_json::from_str(line).unwrap();
            assert_eq!(&record["input"], input, "in input order");
            tasks += 1;
            failed += u64::from(record.get("error").is_some());
            bytes_in += input.to_string().len() as u64;
            bytes_out += line.len() as u64 + 1;
        }
        assert_eq!(failed, 4, "fail, trap, spin and item 13");

        let usage: Value = server.get(&A, "/v1/usage").json().unwrap();
        let totals = &usage["totals"];
        assert_eq!(totals["tasks"], tasks);
        assert_eq!(totals["failed"], failed);
        assert_eq!(totals["bytes_in"], bytes_in);
        assert_eq!(totals["bytes_out"], bytes_out);
        // Wall time: the tasks' rows are their results', and the map items' rows make up
        // the rest of the total.
        let rows = usage["tasks"].as_array().unwrap();
        assert_eq!(rows.len() as u64, tasks);
        for r in &results {
            let mut row = rows
                .iter()
                .find(|row| row["id"] == r["id"])
                .unwrap()
                .clone();
            row.as_object_mut().unwrap().remove("id");
            assert_eq!(row, r["usage"], "the row is what the result says");
        }
        let item_wall: u64 = rows
            .iter()
            .filter(|row| !ids.iter().any(|id| row["id"] == id.as_str()))
            .map(|row| row["wall_ms"].as_u64().unwrap())
            .sum();
        assert_eq!(totals["wall_ms"], wall + item_wall);
        if let Some(cpu) = cpu {
            let items_cpu: u64 = rows
                .iter()
                .filter(|row| !ids.iter().any(|id| row["id"] == id.as_str()))
                .filter_map(|row| row["cpu_ms"].as_u64())
                .sum();
            assert_eq!(totals["cpu_ms"], cpu + items_cpu);
        }
        // The hours add up to the totals, and the other tenant used nothing.
        let hours = usage["hours"].as_array().unwrap();
        for field in ["tasks", "failed", "wall_ms", "bytes_in", "bytes_out"] {
            let sum: u64 = hours.iter().map(|h| h[field].as_u64().unwrap()).sum();
            assert_eq!(totals[field].as_u64().unwrap(), sum, "{field}");
        }
        // Peak memory: every task that ran has one; an hour keeps the largest of its rows
        // (a maximum, not a sum), and the totals the largest of the hours.
        let peak = |v: &Value| v["peak_memory_bytes"].as_u64().unwrap();
        for row in rows {
            assert!(peak(row) > 0, "{row}");
        }
        for h in hours {
            let start = h["hour_ms"].as_i64().unwrap();
            let largest = rows
                .iter()
                .filter(|r| {
                    (start..start + 3_600_000).contains(&r["finished_ms"].as_i64().unwrap())
                })
                .map(peak)
                .max();
            assert_eq!(Some(peak(h)), largest, "{h}");
        }
        let largest = rows.iter().map(peak).max();
        assert_eq!(Some(peak(totals)), largest, "{usage}");
        let theirs: Value = server.get(&B, "/v1/usage").json().unwrap();
        assert_eq!(theirs["totals"]["tasks"], 0);
        assert_eq!(theirs["tasks"], json!([]));
        drop(s.dir);
    });
}
