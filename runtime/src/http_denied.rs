//! `wasi:http` for components that import it without needing it: componentize-js's default
//! output (its `fetch`) imports `wasi:http/types` and `wasi:http/outgoing-handler`. Tasks have
//! no network, so every such import is linked to a stub that fails: a resource of
//! `wasi:http` can never be made, and calling any of its functions traps with
//! [`DENIED`]. A component that never calls them loads and runs as any other.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceType};

/// The error a call into `wasi:http` traps with.
pub(crate) const DENIED: &str =
    "wasi:http is not available to wasmpool tasks: every request is denied (tasks have no network)";

/// The host type of every stubbed `wasi:http` resource (none is ever made).
struct DeniedHttpResource;

/// Whether an import is one this module stubs.
fn is_http(name: &str) -> bool {
    name.starts_with("wasi:http/")
}

/// Links every `wasi:http` interface `component` imports to stubs that trap with [`DENIED`].
/// Its other imports are left to the linker's own definitions (and fail there if unknown).
pub(crate) fn link_denied_http<T: 'static>(
    linker: &mut Linker<T>,
    component: &Component,
) -> wasmtime::Result<()> {
    let engine = component.engine();
    let ty = component.component_type();
    // Resources an interface `use`s from another (an `input-stream` in `wasi:http/types`)
    // are the other's: defined there (by WASI, or by an earlier stub), never again here.
    let mut seen: Vec<ResourceType> = Vec::new();
    for (name, import) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(instance) = import.ty else {
            continue;
        };
        let http = is_http(name);
        let mut stubs = if http {
            Some(linker.instance(name)?)
        } else {
            None
        };
        for (item, export) in instance.exports(engine) {
            match export.ty {
                ComponentItem::Resource(resource) => {
                    if seen.contains(&resource) {
                        continue;
                    }
                    seen.push(resource);
                    if let Some(stubs) = stubs.as_mut() {
                        stubs.resource(
                            item,
                            ResourceType::host::<DeniedHttpResource>(),
                            |_, _| Ok(()),
                        )?;
                    }
                }
                ComponentItem::ComponentFunc(_) => {
                    if let Some(stubs) = stubs.as_mut() {
                        let what = format!("{name}#{item}");
                        stubs.func_new(item, move |_, _, _, _| {
                            Err(wasmtime::Error::msg(format!(
                                "{DENIED} (`{what}` was called)"
                            )))
                        })?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, Linker, ResourceTable};
    use wasmtime::{Config, Engine, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    use super::*;

    /// The shape of componentize-js's default imports, cut down: `wasi:http/types` (which
    /// `use`s a `wasi:io` resource) and `wasi:http/outgoing-handler`.
    const WIT: &str = r#"
        package test:http-guest;

        package wasi:io@0.2.6 {
            interface streams {
                resource input-stream;
            }
        }

        package wasi:http@0.2.6 {
            interface types {
                use wasi:io/streams@0.2.6.{input-stream};
                resource fields {
                    constructor();
                }
                resource outgoing-request {
                    constructor(headers: fields);
                }
                resource future-incoming-response;
                body-length: func(body: borrow<input-stream>) -> u64;
            }
            interface outgoing-handler {
                use types.{outgoing-request, future-incoming-response};
                handle: func(request: outgoing-request) -> future-incoming-response;
            }
        }

        world guest {
            import wasi:http/outgoing-handler@0.2.6;
            export run: func() -> u32;
        }
    "#;

    /// A component of that world whose `run` makes a `fields`: a call into `wasi:http`.
    fn component(engine: &Engine) -> Component {
        let mut resolve = wit_parser::Resolve::default();
        let package = resolve.push_str("guest.wit", WIT).expect("the WIT parses");
        let world = resolve
            .select_world(&[package], Some("guest"))
            .expect("the world");
        let mut module = wat::parse_str(
            r#"(module
                (import "wasi:http/types@0.2.6" "[constructor]fields" (func $fields (result i32)))
                (func (export "run") (result i32) call $fields))"#,
        )
        .expect("the core module");
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
        )
        .expect("metadata");
        let bytes = wit_component::ComponentEncoder::default()
            .module(&module)
            .expect("module")
            .validate(true)
            .encode()
            .expect("the component");
        Component::new(engine, bytes).expect("compiles")
    }

    struct State {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    fn wasi_linker(engine: &Engine) -> Linker<State> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI");
        linker
    }

    #[test]
    fn a_component_importing_wasi_http_loads_and_a_request_is_denied() {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).expect("engine");
        let component = component(&engine);

        // WASI alone does not satisfy it (what the host said before these stubs).
        let err = wasi_linker(&engine)
            .instantiate_pre(&component)
            .err()
            .expect("wasi:http is missing from WASI's linker");
        assert!(format!("{err:#}").contains("wasi:http"), "{err:#}");

        let mut linker = wasi_linker(&engine);
        link_denied_http(&mut linker, &component).expect("stubs");
        let mut store = Store::new(
            &engine,
            State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        let instance = linker
            .instantiate(&mut store, &component)
            .expect("it loads");
        let run = instance
            .get_typed_func::<(), (u32,)>(&mut store, "run")
            .expect("run");
        let err = run.call(&mut store, ()).expect_err("the call traps");
        let text = format!("{err:?}");
        assert!(text.contains(DENIED), "{text}");
        assert!(text.contains("[constructor]fields"), "{text}");
    }
}
