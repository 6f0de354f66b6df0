//! The `#[task]` attribute of `wasmpool-guest`.
//!
//! `#[task]` keeps the function as written and adds, beside it, a hidden module of the same
//! name (modules live in the type namespace, so the two do not clash) holding the task's name
//! and a wrapper that decodes MessagePack arguments, calls the function and encodes its
//! result. `export_tasks!(name, ...)` refers to those modules. Input the macro cannot turn
//! into a task is a compile error pointing at the offending tokens.

use proc_macro::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Meta, Pat, ReturnType, Type, Visibility, parse_macro_input};

/// Turns a plain function into a wasmpool task.
///
/// The arguments and the return value must implement serde's `Deserialize` and `Serialize`.
/// A return type that is a `Result<T, E>` (with `E: Display`) makes a fallible task: `Err(e)`
/// reaches the caller as the task's error with `e.to_string()` as its message. That holds
/// whatever the type is called: `Result<T, E>`, `io::Result<T>`, or an alias of the
/// crate's own (`type Res = Result<u64, String>`), as the type checker, not the spelling,
/// decides.
///
/// The attribute takes one optional word to say it outright:
/// - `#[task(fallible)]`: the return type must be a `Result` (a compile error otherwise);
/// - `#[task(infallible)]`: the value is sent whole, even a `Result` (the caller then
///   decodes `{"Ok": ..}` / `{"Err": ..}`, serde's form of a `Result`).
///
/// Not accepted, each with an error at the offending tokens: other arguments to the
/// attribute, `async`, `unsafe`, `extern` or `const` functions, generics, `self` receivers,
/// argument patterns other than plain names, and variadics.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let func = parse_macro_input!(item as ItemFn);
    match expand(attr, &func) {
        Ok(tokens) => tokens.into(),
        Err(err) => {
            let err = err.to_compile_error();
            // Keep the function itself so one mistake does not cascade into
            // "cannot find function" errors at every call site.
            quote!(#func #err).into()
        }
    }
}

/// What the attribute says of the return value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Returns {
    /// Nothing: a `Result` (by its type, aliases included) is fallible, anything else a value.
    Decide,
    /// `#[task(fallible)]`: a `Result`, whose `Err` fails the task.
    Fallible,
    /// `#[task(infallible)]`: a value sent whole, a `Result` too.
    Infallible,
}

fn parse_attr(attr: proc_macro2::TokenStream) -> syn::Result<Returns> {
    if attr.is_empty() {
        return Ok(Returns::Decide);
    }
    let wrong = || {
        syn::Error::new(
            attr.span(),
            "#[task] takes no arguments other than `fallible` or `infallible`: \
             write #[task], #[task(fallible)] or #[task(infallible)]",
        )
    };
    match syn::parse2::<Meta>(attr.clone()) {
        Ok(Meta::Path(p)) if p.is_ident("fallible") => Ok(Returns::Fallible),
        Ok(Meta::Path(p)) if p.is_ident("infallible") => Ok(Returns::Infallible),
        _ => Err(wrong()),
    }
}

fn expand(attr: proc_macro2::TokenStream, func: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let returns = parse_attr(attr)?;
    let sig = &func.sig;
    if let Some(t) = &sig.asyncness {
        return Err(syn::Error::new(
            t.span(),
            "a #[task] cannot be `async`: tasks run to completion in their worker",
        ));
    }
    if let Some(t) = &sig.unsafety {
        return Err(syn::Error::new(t.span(), "a #[task] cannot be `unsafe`"));
    }
    if let Some(t) = &sig.abi {
        return Err(syn::Error::new(t.span(), "a #[task] cannot declare an ABI"));
    }
    if let Some(t) = &sig.constness {
        return Err(syn::Error::new(t.span(), "a #[task] cannot be `const`"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a #[task] cannot be generic: its argument types decide how arguments are decoded",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(v.span(), "a #[task] cannot be variadic"));
    }

    let mut names = Vec::new();
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "a #[task] cannot take `self`: make it a free function taking the value as an argument",
                ));
            }
            FnArg::Typed(pt) => {
                let Pat::Ident(ident) = &*pt.pat else {
                    return Err(syn::Error::new(
                        pt.pat.span(),
                        "a #[task] argument must be a plain name, e.g. `x: u64`",
                    ));
                };
                if let Type::ImplTrait(t) = &*pt.ty {
                    return Err(syn::Error::new(
                        t.span(),
                        "a #[task] argument cannot be `impl Trait`: name a concrete type",
                    ));
                }
                if let Type::Reference(t) = &*pt.ty {
                    return Err(syn::Error::new(
                        t.span(),
                        "a #[task] argument cannot be a reference: take an owned value (e.g. `String`, `Vec<T>`)",
                    ));
                }
                names.push(ident.ident.clone());
                types.push((*pt.ty).clone());
            }
        }
    }

    let fn_name = &sig.ident;
    let task_name = fn_name.to_string();
    let vis = match &func.vis {
        Visibility::Public(_) => quote!(pub),
        _ => quote!(pub(crate)),
    };
    let params = names.iter().zip(&types).map(|(n, t)| {
        let n = n.to_string();
        let t = quote!(#t).to_string().replace(' ', "");
        quote!((#n, #t))
    });
    let locals: Vec<_> = (0..names.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let decode = locals.iter().zip(&types).map(|(local, ty)| {
        quote_spanned! {ty.span()=>
            let #local: #ty = __args.decode_next::<#ty>()?;
        }
    });
    let encode = match (&sig.output, returns) {
        (ReturnType::Default, Returns::Fallible) => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "#[task(fallible)] needs a return type that is a `Result<T, E>`",
            ));
        }
        (ReturnType::Default, _) => quote!(::wasmpool_guest::__private::encode_return(
            NAME, __out, __buf
        )),
        (ReturnType::Type(_, ty), Returns::Fallible) => quote_spanned! {ty.span()=>
            ::wasmpool_guest::__private::encode_result(NAME, __out, __buf)
        },
        (ReturnType::Type(..), Returns::Infallible) => {
            quote!(::wasmpool_guest::__private::encode_return(
                NAME, __out, __buf
            ))
        }
        (ReturnType::Type(_, ty), Returns::Decide) if is_result(ty) => {
            quote!(::wasmpool_guest::__private::encode_result(
                NAME, __out, __buf
            ))
        }
        (ReturnType::Type(_, ty), Returns::Decide) if matches!(**ty, Type::Never(_)) => {
            quote!(::wasmpool_guest::__private::encode_return(
                NAME, __out, __buf
            ))
        }
        (ReturnType::Type(_, ty), Returns::Decide) => {
            // Any other spelling may still be a `Result` (an alias, `io::Result<T>` under
            // another name): the type checker decides, by which trait's method applies
            // first. `__Kind<Result<..>>` has `__ViaResult` itself; everything has
            // `__ViaValue` only through a reference, which method lookup tries second.
            quote_spanned! {ty.span()=>
                let __kind = (&__Kind(&__out)).__kind();
                __kind.encode(NAME, __out, __buf)
            }
        }
    };
    let decide = matches!((&sig.output, returns), (ReturnType::Type(_, ty), Returns::Decide)
        if !is_result(ty) && !matches!(**ty, Type::Never(_)));
    let dispatch = if decide {
        quote! {
            struct __Kind<'a, T>(&'a T);
            struct __IsResult;
            struct __IsValue;
            trait __ViaResult {
                fn __kind(&self) -> __IsResult {
                    __IsResult
                }
            }
            impl<T, E> __ViaResult for __Kind<'_, ::std::result::Result<T, E>> {}
            trait __ViaValue {
                fn __kind(&self) -> __IsValue {
                    __IsValue
                }
            }
            impl<T> __ViaValue for &__Kind<'_, T> {}
            impl __IsResult {
                #[inline]
                fn encode<T: ::wasmpool_guest::serde::Serialize + 'static, E: ::std::fmt::Display>(
                    self,
                    task: &str,
                    value: ::std::result::Result<T, E>,
                    out: &mut ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), ::wasmpool_guest::__private::TaskError> {
                    ::wasmpool_guest::__private::encode_result(task, value, out)
                }
            }
            impl __IsValue {
                #[inline]
                fn encode<T: ::wasmpool_guest::serde::Serialize + 'static>(
                    self,
                    task: &str,
                    value: T,
                    out: &mut ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), ::wasmpool_guest::__private::TaskError> {
                    ::wasmpool_guest::__private::encode_return(task, value, out)
                }
            }
        }
    } else {
        quote!()
    };

    Ok(quote! {
        #func

        #[doc(hidden)]
        #[allow(non_snake_case, non_camel_case_types, dead_code, clippy::all)]
        #vis mod #fn_name {
            #[allow(unused_imports)]
            use super::*;

            #dispatch

            /// The task's name, as callers name it.
            pub const NAME: &str = #task_name;
            const PARAMS: &[(&str, &str)] = &[#(#params),*];

            /// Decodes the arguments, runs the task and appends its encoded result to
            /// `__buf`.
            pub fn call(
                args: &[u8],
                __buf: &mut ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<(), ::wasmpool_guest::__private::TaskError> {
                let mut __args = ::wasmpool_guest::__private::Args::new(NAME, PARAMS, args);
                __args.begin()?;
                #(#decode)*
                let __out = super::#fn_name(#(#locals),*);
                #encode
            }
        }
    })
}

fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
        Type::Paren(p) => is_result(&p.elem),
        _ => false,
    }
}
