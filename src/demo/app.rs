//! The demo's app: a guest book that shows which node's app served each
//! page and each write, and the fencing token litegate stamped on it. All
//! demo apps share one in-memory book, standing in for a replicated database.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: usize,
    pub text: String,
    pub served_by: String,
    pub term: Option<String>,
}

pub type Book = Arc<Mutex<Vec<Entry>>>;

/// Serves the demo app for node `node` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, node: String, book: Book) {
    let node: Arc<str> = Arc::from(node);
    while let Ok((stream, _)) = listener.accept().await {
        let (node, book) = (Arc::clone(&node), Arc::clone(&book));
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (node, book) = (Arc::clone(&node), Arc::clone(&book));
                async move { Ok::<_, Infallible>(answer(req, &node, &book).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, node: &str, book: &Book) -> Response<Full<Bytes>> {
    let role = header_str(req.headers(), "litegate-role")
        .unwrap_or("-")
        .to_owned();
    let term = header_str(req.headers(), "litegate-term").map(str::to_owned);
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/") => html(page(node, &role, book)),
        (Method::GET, "/entries") => {
            let entries = book.lock().map(|b| b.clone()).unwrap_or_default();
            json(
                StatusCode::OK,
                &serde_json::json!({ "served_by": node, "entries": entries }),
            )
        }
        (Method::POST, "/entries") => {
            let is_form = header_str(req.headers(), "content-type")
                .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "entries are at most 64 KiB\n",
                    )
                }
            };
            // The page's form sends `text=…`; `curl -d hello` sends a form
            // body that is just the text.
            let text = form_urlencoded::parse(&body)
                .find(|(k, _)| k == "text" && is_form)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
            if text.is_empty() {
                return plain(StatusCode::BAD_REQUEST, "send some text\n");
            }
            let entry = {
                let Ok(mut b) = book.lock() else {
                    return plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the book is unavailable\n",
                    );
                };
                let entry = Entry {
                    id: b.len() + 1,
                    text,
                    served_by: node.to_owned(),
                    term,
                };
                b.push(entry.clone());
                entry
            };
            if is_form {
                let mut resp = plain(StatusCode::SEE_OTHER, "added\n");
                resp.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/"));
                resp
            } else {
                json(StatusCode::CREATED, &entry)
            }
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "try GET /, GET /entries or POST /entries\n",
        ),
    }
}

fn page(node: &str, role: &str, book: &Book) -> String {
    let rows: String = book
        .lock()
        .map(|b| {
            b.iter()
                .rev()
                .map(|e| {
                    format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        e.id,
                        escape(&e.text),
                        escape(&e.served_by),
                        escape(e.term.as_deref().unwrap_or("-"))
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>litegate demo</title>\
         <style>body{{font-family:sans-serif;max-width:44em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:left}}</style></head>\
         <body><h1>litegate demo</h1><p>This page was served by <b>{}</b>'s app (litegate says this node is <b>{}</b>).</p>\
         <form method=post action=/entries><input name=text placeholder='write something' autofocus> <button>Write</button></form>\
         <p>Writes always land on the primary's app, whichever node you post to.</p>\
         <table><tr><th>#</th><th>text</th><th>written by app on</th><th>term</th></tr>{rows}</table></body></html>",
        escape(node),
        escape(role)
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
