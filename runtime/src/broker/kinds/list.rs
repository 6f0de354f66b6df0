//! A list: items in order, with Python's index and slice rules.

use wasmpool_objects::wire::{Handle, Kind, ObjectError, Request, Response};

use super::{Common, ObjectKind, invalid};
use crate::broker::object::{MAX_OBJECT_BYTES, OpResult, Step, growth, item_cost, too_big};
use crate::broker::refs::RefLog;
use crate::broker::{Owner, Responder};
use crate::rules::handles_in;

#[derive(Debug)]
pub(crate) struct List {
    pub items: Vec<Vec<u8>>,
}

impl ObjectKind for List {
    fn start(
        &mut self,
        cx: &mut Common<'_>,
        _owner: Owner,
        _end: u8,
        req: Request,
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        if cx.stored.saturating_add(growth(&req)) > MAX_OBJECT_BYTES {
            return Step::Done(too_big(cx.kind, *cx.stored));
        }
        Step::Done(list_op(&mut self.items, cx.stored, cx.refs, req))
    }

    fn never_waits(&self, req: &Request) -> bool {
        matches!(req, Request::ListAppend(_))
    }

    fn contents(&self) -> Vec<Handle> {
        self.items.iter().flat_map(|v| handles_in(v)).collect()
    }
}

/// Python's index rules: negative counts from the end.
fn index(len: usize, i: i64) -> Option<usize> {
    let i = if i < 0 { len as i64 + i } else { i };
    usize::try_from(i).ok().filter(|&i| i < len)
}

/// Python's slice rules for one bound: `None` is `default`, negative counts from the end,
/// and the result is clamped to `0..=len`.
fn bound(len: usize, i: Option<i64>, default: usize) -> usize {
    let Some(i) = i else { return default };
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    let i = if i < 0 { i.saturating_add(len_i) } else { i };
    usize::try_from(i.clamp(0, len_i)).unwrap_or(len)
}

fn list_op(
    list: &mut Vec<Vec<u8>>,
    stored: &mut usize,
    refs: &mut RefLog,
    req: Request,
) -> OpResult {
    let out_of_range = || ObjectError::Missing("IndexError: list index out of range".into());
    Ok(match req {
        Request::ListAppend(v) => {
            *stored += item_cost(&v);
            refs.added(&v);
            list.push(v);
            Response::Unit
        }
        Request::ListExtend(vs) => {
            *stored += vs.iter().map(item_cost).sum::<usize>();
            vs.iter().for_each(|v| refs.added(v));
            list.extend(vs);
            Response::Unit
        }
        Request::ListGet(i) => {
            let i = index(list.len(), i).ok_or_else(out_of_range)?;
            Response::Value(list[i].clone())
        }
        Request::ListSet(i, v) => {
            let i = index(list.len(), i).ok_or_else(out_of_range)?;
            *stored = (*stored + item_cost(&v)).saturating_sub(item_cost(&list[i]));
            refs.added(&v);
            refs.removed(&list[i]);
            list[i] = v;
            Response::Unit
        }
        Request::ListLen => Response::Count(list.len() as u64),
        Request::ListPop(i) => {
            let i = index(list.len(), i.unwrap_or(-1))
                .ok_or_else(|| ObjectError::Missing("IndexError: pop index out of range".into()))?;
            let v = list.remove(i);
            *stored = stored.saturating_sub(item_cost(&v));
            refs.taken(&v);
            Response::Value(v)
        }
        Request::ListIndex(v) => match list.iter().position(|x| *x == v) {
            Some(i) => Response::Count(i as u64),
            None => {
                return Err(ObjectError::Missing(
                    "ValueError: value is not in list".into(),
                ));
            }
        },
        Request::ListItems => Response::Values(list.clone()),
        Request::ListInsert(i, v) => {
            let at = bound(list.len(), Some(i), 0);
            *stored += item_cost(&v);
            refs.added(&v);
            list.insert(at, v);
            Response::Unit
        }
        Request::ListRemove(v) => match list.iter().position(|x| *x == v) {
            Some(i) => {
                let v = list.remove(i);
                *stored = stored.saturating_sub(item_cost(&v));
                refs.removed(&v);
                Response::Unit
            }
            None => {
                return Err(ObjectError::Missing(
                    "ValueError: list.remove(x): x not in list".into(),
                ));
            }
        },
        Request::ListClear => {
            for v in list.drain(..) {
                refs.removed(&v);
            }
            *stored = 0;
            Response::Unit
        }
        Request::ListSlice(start, stop) => {
            let len = list.len();
            let (start, stop) = (bound(len, start, 0), bound(len, stop, len));
            Response::Values(list.get(start..stop).unwrap_or_default().to_vec())
        }
        req => return invalid(Kind::List, &req),
    })
}
