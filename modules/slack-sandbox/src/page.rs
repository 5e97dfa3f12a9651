//! A small page of the sandbox for `productbuilder demo`: a person reads each channel and its
//! threads (`GET /`) and writes a message (`POST /say`), which may mention the bot and then
//! reaches Socket Mode like any [`Sandbox::post_user_message`](crate::Sandbox::post_user_message).

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::Shared;
use crate::world::{Author, Message, World};

/// `GET /`: every channel, its messages oldest first, each thread's replies under its parent.
pub(crate) async fn show(State(shared): State<Arc<Shared>>) -> Html<String> {
    let world = shared.world();
    Html(render(&world).into_string())
}

fn render(world: &World) -> Markup {
    let mention = format!("@{}", world.bot_name);
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                title { "Sandbox Slack" }
                style { "body{font-family:sans-serif;max-width:60em;margin:auto}\
                         .msg{margin:.3em 0}.reply{margin-left:2em;color:#333}\
                         .who{font-weight:bold}.ts{color:#888;font-size:.8em}\
                         form{margin:.5em 0 2em}" }
            }
            body {
                h1 { "Sandbox Slack" }
                p { "Write " code { (mention) } " to mention the bot. "
                    a href="/" { "Refresh" } }
                @if world.channels.is_empty() {
                    p { "No channel yet." }
                }
                @for channel in world.channels.values() {
                    h2 { "#" (channel.name) " " span.ts { (channel.id) } }
                    @for parent in channel.messages.iter().filter(|m| !m.is_reply()) {
                        (message(parent, "msg"))
                        @for reply in channel.replies(parent.key) {
                            (message(reply, "msg reply"))
                        }
                        (say_form(&channel.id, Some(&parent.ts), "Reply in thread"))
                    }
                    (say_form(&channel.id, None, "Send"))
                }
            }
        }
    }
}

fn message(m: &Message, class: &str) -> Markup {
    html! {
        div class=(class) {
            span.who { (m.user) } " "
            span.ts { (m.ts) @if m.history.len() > 1 { " (edited)" } } " "
            span { (m.text) }
        }
    }
}

fn say_form(channel: &str, thread_ts: Option<&str>, label: &str) -> Markup {
    html! {
        form method="post" action="/say" {
            input type="hidden" name="channel" value=(channel);
            @if let Some(ts) = thread_ts {
                input type="hidden" name="thread_ts" value=(ts);
            }
            input name="user" value="U0DEMO" size="8";
            " "
            input name="text" size="50" required;
            " "
            button { (label) }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Say {
    channel: String,
    user: String,
    text: String,
    thread_ts: Option<String>,
}

/// `POST /say`: a person writes; `@<bot name>` becomes a real mention (`<@BOTID>`).
pub(crate) async fn say(State(shared): State<Arc<Shared>>, Form(say): Form<Say>) -> Response {
    {
        let mut world = shared.world();
        let text = say.text.replace(
            &format!("@{}", world.bot_name),
            &format!("<@{}>", world.bot_user_id),
        );
        let user = if say.user.trim().is_empty() {
            "U0DEMO".to_owned()
        } else {
            say.user.trim().to_owned()
        };
        let Some(channel) = world.channel_id(&say.channel) else {
            return (axum::http::StatusCode::NOT_FOUND, "no such channel").into_response();
        };
        let thread_ts = say.thread_ts.as_deref().filter(|t| !t.is_empty());
        let Some(posted) = world.append(&channel, Author::User(user), &text, thread_ts, None, None)
        else {
            return (axum::http::StatusCode::NOT_FOUND, "no such thread").into_response();
        };
        crate::socket::on_message(&mut world, &shared, &channel, &posted);
    }
    shared.changed();
    Redirect::to("/").into_response()
}
