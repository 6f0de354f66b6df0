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
use syn::{FnArg, ItemFn, Pat, ReturnType, Type, Visibility, parse_macro_input};

/// Turns a plain function into a wasmpool task.
///
/// The arguments and the return value must implement serde's `Deserialize` and `Serialize`.
/// A return type written `Result<T, E>` (with `E: Display`) makes a fallible task: `Err(e)`
/// reaches the caller as the task's error with `e.to_string()` as its message.
///
/// Not accepted, each with an error at the offending tokens: arguments to the attribute,
/// `async`, `unsafe`, `extern` or `const` functions, generics, `self` receivers, argument
/// patterns other than plain names, and variadics.
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

fn expand(attr: proc_macro2::TokenStream, func: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new(attr.span(), "#[task] takes no arguments"));
    }
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
    let returns_result = match &sig.output {
        ReturnType::Type(_, ty) => is_result(ty),
        ReturnType::Default => false,
    };
    let encode = if returns_result {
        quote!(::wasmpool_guest::__private::encode_result(
            NAME, __out, __buf
        ))
    } else {
        quote!(::wasmpool_guest::__private::encode_return(
            NAME, __out, __buf
        ))
    };

    Ok(quote! {
        #func

        #[doc(hidden)]
        #[allow(non_snake_case, non_camel_case_types, clippy::all)]
        #vis mod #fn_name {
            #[allow(unused_imports)]
            use super::*;

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
