wasmpool_guest::export_tasks!();
