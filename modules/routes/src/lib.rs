//! The HTTP seam of a module: the routes it serves, each with its access class.
//!
//! # Brief overview
//! - [`Route`]: a method, a path template (`/previews/{owner}/{repo}/{number}/logs`), an
//!   [`Access`] class and the handler, its state already bound.
//! - [`Module`]: a [`productbuilder_planner::Module`] that also declares routes. The binary builds
//!   the one router from its own routes plus every module's, behind its one auth layer, which
//!   decides each request from the [`Table`] of all routes alone ([`Table::access_of`]).
//!
//! # Why a crate of its own
//! The planner stays pure and free of HTTP (it is "tenants × specs → units", tested without a
//! server, and the scheduler layer builds without axum); a module that serves routes depends on
//! this small crate instead, and the binary keeps the one auth decision.

use axum::http::{Method, StatusCode};
use axum::routing::{MethodFilter, MethodRouter};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: probes, and the webhook (which checks its own HMAC signature).
    Public,
    /// Open unless `[http].read_token` is set; then the read token or the api token.
    Read,
    /// The api token only; 403 for everyone when none is configured.
    Mutating,
}

/// One route: its method and path template, who may call it, and its handler.
#[derive(Clone)]
pub struct Route {
    pub method: Method,
    /// Literal segments and `{name}` parameters, as axum writes them.
    pub path: &'static str,
    pub access: Access,
    /// The handler for `method` only, its state bound (`on(filter, handler).with_state(state)`).
    pub handler: MethodRouter,
}

impl Route {
    /// A route whose handler is built for exactly `method`, so the two cannot disagree.
    ///
    /// # Panics
    /// For a method axum cannot route (an extension method): a bug caught by the first test.
    pub fn new(
        method: Method,
        path: &'static str,
        access: Access,
        handler: impl FnOnce(MethodFilter) -> MethodRouter,
    ) -> Route {
        let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
        Route {
            method,
            path,
            access,
            handler: handler(filter),
        }
    }
}

/// A vertical of the daemon that also serves HTTP routes. Modules without routes keep the default.
pub trait Module: productbuilder_planner::Module {
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }
}

/// Every route's method, path and access: what the auth layer decides from.
#[derive(Debug, Clone, Default)]
pub struct Table(Vec<(Method, &'static str, Access)>);

impl Table {
    pub fn new(routes: &[Route]) -> Table {
        Table(
            routes
                .iter()
                .map(|r| (r.method.clone(), r.path, r.access))
                .collect(),
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Method, &'static str, Access)> {
        self.0.iter()
    }

    /// The access decision for a request, from the table alone: an unlisted path is 404 and an
    /// unlisted method of a listed path 405, before any handler could run.
    pub fn access_of(&self, method: &Method, path: &str) -> Result<Access, StatusCode> {
        // axum answers HEAD with the GET handler.
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let mut listed = self.0.iter().filter(|r| fits(r.1, path)).peekable();
        if listed.peek().is_none() {
            return Err(StatusCode::NOT_FOUND);
        }
        listed
            .find(|r| r.0 == method)
            .map(|r| r.2)
            .ok_or(StatusCode::METHOD_NOT_ALLOWED)
    }
}

/// Whether `path` (as requested, still percent-encoded, as axum matches it) fits a route
/// template: literal segments equal, `{name}` any non-empty segment.
pub fn fits(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) if t.starts_with('{') && t.ends_with('}') && !p.is_empty() => {}
            (Some(t), Some(p)) if t == p => {}
            _ => return false,
        }
    }
}
