//! On-device AI in the node: SITREPs, reviews, the merged board, triage, translation,
//! transcription and search. Every product is a message with a machine annotation
//! (`ai`): what produced it (model name and SHA-256, template, rule set), from which
//! inputs, signed by this node as the envelope author, with a confidence. Its state
//! (`draft` → `approved` | `rejected`) is set by people through reviews.

use crate::node::{Node, lock, now_ms};
use crate::ops::NodeError;
use fieldmesh_ai::llm::{GenOptions, Llm};
use fieldmesh_ai::sitrep::{self, Source};
use fieldmesh_channel::MessageView;
use fieldmesh_core::{ChannelId, Precedence};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Template id of the prompt that asks a model for SITREP prose.
pub const SITREP_PROSE_TEMPLATE: &str = "sitrep-prose/1";
/// Most messages one SITREP reads (the newest are kept).
pub const SITREP_MAX_INPUTS: usize = 200;

/// Requests to the AI module, over the API or in process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AiRequest {
    Sitrep {
        channel: String,
        #[serde(default)]
        since_ms: Option<u64>,
        #[serde(default)]
        unit: Option<String>,
        #[serde(default)]
        no_model: bool,
        /// Only messages by this author (node id, or a prefix of it).
        #[serde(default)]
        author: Option<String>,
    },
    Review {
        message: String,
        verdict: String,
    },
    Board,
    Triage,
    Translate {
        message: String,
        to: String,
        #[serde(default)]
        from: Option<String>,
    },
    Transcribe {
        message: String,
    },
    Search {
        query: String,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// Translate every new message of a channel into `to` (`None`: stop).
    AutoTranslate {
        channel: String,
        #[serde(default)]
        to: Option<String>,
    },
}

fn default_limit() -> usize {
    10
}

/// Models loaded by this process, by registry name.
#[derive(Default)]
pub struct AiState {
    llms: Mutex<HashMap<String, (Arc<Llm>, crate::models::ManifestBody)>>,
    embedder: Mutex<
        Option<(
            Arc<fieldmesh_ai::embed::Embedder>,
            crate::models::ManifestBody,
        )>,
    >,
    whisper: Mutex<
        Option<(
            Arc<fieldmesh_ai::whisper::Transcriber>,
            crate::models::ManifestBody,
        )>,
    >,
    semantic_triage: Mutex<Option<Arc<fieldmesh_ai::triage::Semantic>>>,
}

impl std::fmt::Debug for AiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiState").finish_non_exhaustive()
    }
}

/// `draft`, `approved` or `rejected`: any rejection wins (conservative), then any
/// approval.
pub fn review_state(m: &MessageView) -> &'static str {
    if m.reviews.values().any(|v| v.starts_with("rejected")) {
        "rejected"
    } else if m.reviews.values().any(|v| v == "approved") {
        "approved"
    } else {
        "draft"
    }
}

/// The annotation of a message, parsed; `None` for plain messages or malformed JSON.
pub fn annotation(m: &MessageView) -> Option<Value> {
    m.ai.as_deref().and_then(|a| serde_json::from_str(a).ok())
}

fn task_of(m: &MessageView) -> Option<String> {
    annotation(m).and_then(|a| a.get("task").and_then(Value::as_str).map(str::to_owned))
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(e.to_string())
}

impl Node {
    pub(crate) fn ai_op(&self, req: &AiRequest) -> Result<Value, NodeError> {
        match req {
            AiRequest::Sitrep {
                channel,
                since_ms,
                unit,
                no_model,
                author,
            } => self.sitrep(
                channel,
                *since_ms,
                unit.as_deref(),
                *no_model,
                author.as_deref(),
            ),
            AiRequest::Review { message, verdict } => self.review(message, verdict),
            AiRequest::Board => self.board(),
            AiRequest::Triage => self.triage_list(),
            AiRequest::Translate { message, to, from } => {
                self.translate(message, to, from.as_deref())
            }
            AiRequest::Transcribe { message } => self.transcribe(message),
            AiRequest::Search { query, limit } => self.search(query, *limit),
            AiRequest::AutoTranslate { channel, to } => {
                self.set_auto_translate(channel, to.as_deref())
            }
        }
    }

    /// Signers whose model manifests this node accepts: itself and trusted authorities.
    fn model_signers(&self) -> Vec<fieldmesh_core::NodeId> {
        let mut v = vec![self.node_id()];
        if let Ok(t) = crate::access::load_trust(self.home.as_deref()) {
            v.extend(t.into_iter().map(|a| a.id));
        }
        v
    }

    pub(crate) fn model_registry(&self) -> Result<crate::models::Registry, NodeError> {
        let home = self.home.as_deref().ok_or_else(|| {
            NodeError::BadRequest("this node has no home, so no model registry".into())
        })?;
        Ok(crate::models::Registry::open(home, self.model_signers()))
    }

    /// The language model registered as `name`, verified (signature and SHA-256) and
    /// loaded once per process.
    pub(crate) fn llm(
        &self,
        name: &str,
        threads: u32,
    ) -> Result<(Arc<Llm>, crate::models::ManifestBody), NodeError> {
        if let Some(hit) = lock(&self.ai.llms).get(name) {
            return Ok(hit.clone());
        }
        let verified = self
            .model_registry()?
            .resolve(name)
            .map_err(|e| NodeError::Forbidden(format!("{e:#}")))?;
        if verified.manifest.format != crate::models::Format::Gguf {
            return Err(NodeError::BadRequest(format!(
                "model {name} is not a GGUF language model"
            )));
        }
        let llm =
            Llm::load(&verified.main_file(), name, task_threads(threads)).map_err(internal)?;
        let entry = (Arc::new(llm), verified.manifest);
        lock(&self.ai.llms).insert(name.to_owned(), entry.clone());
        Ok(entry)
    }

    /// Every message in every channel this node may read, with its channel.
    fn readable_messages(&self) -> Result<Vec<(ChannelId, String, MessageView)>, NodeError> {
        let mut out = Vec::new();
        for (id, _) in self.store.channels()? {
            let Ok(name) = self.resolve(&id.to_hex()).and_then(|_| {
                self.with_channel(&id, |ch| {
                    Ok(ch.summary().map(|s| s.name).unwrap_or_default())
                })
            }) else {
                continue; // not readable here: carried, not read
            };
            let msgs = self.with_channel(&id, |ch| Ok(ch.messages()))?;
            out.extend(msgs.into_iter().map(|m| (id, name.clone(), m)));
        }
        Ok(out)
    }

    /// The channel holding message `id`.
    pub(crate) fn find_message(&self, id: &str) -> Result<(ChannelId, MessageView), NodeError> {
        for (cid, _) in self.store.channels()? {
            if self.resolve(&cid.to_hex()).is_err() {
                continue;
            }
            if let Some(m) = self.with_channel(&cid, |ch| Ok(ch.message(id)))? {
                return Ok((cid, m));
            }
        }
        Err(NodeError::NotFound(format!(
            "no message {id} in any channel this node can read"
        )))
    }

    /// Posts a message carrying a machine annotation.
    pub(crate) fn post_ai(
        &self,
        channel: &ChannelId,
        text: &str,
        precedence: Precedence,
        reply_to: Option<&str>,
        attachments: Vec<fieldmesh_channel::AttachmentRef>,
        ai: &Value,
    ) -> Result<crate::ops::Posted, NodeError> {
        let ai = ai.to_string();
        self.write(&channel.to_hex(), |ch, me, hlc| {
            ch.post_annotated(me, hlc, text, precedence, reply_to, attachments, Some(&ai))
        })
    }

    fn provenance(&self, task: &str, template: &str, inputs: &[String], confidence: &str) -> Value {
        json!({
            "task": task,
            "template": template,
            "inputs": inputs,
            "signer": self.node_id().to_hex(),
            "produced_ms": now_ms(),
            "confidence": confidence,
            "model": Value::Null,
        })
    }

    fn sitrep(
        &self,
        channel: &str,
        since_ms: Option<u64>,
        unit: Option<&str>,
        no_model: bool,
        author: Option<&str>,
    ) -> Result<Value, NodeError> {
        let id = self.resolve(channel)?;
        let (name, msgs) = self.with_channel(&id, |ch| {
            Ok((
                ch.summary().map(|s| s.name).unwrap_or_default(),
                ch.messages(),
            ))
        })?;
        let since = since_ms.unwrap_or(0);
        let mut sources: Vec<Source> = msgs
            .iter()
            .filter(|m| !m.redacted && !m.text.trim().is_empty() && m.timestamp.wall_ms() >= since)
            .filter(|m| {
                author.is_none_or(|a| m.author.to_hex().starts_with(&a.to_ascii_lowercase()))
            })
            // Earlier AI products are not sources; triage verdicts and transcripts are
            // what people said.
            .filter(|m| matches!(task_of(m).as_deref(), None | Some("triage" | "transcript")))
            .map(|m| Source {
                id: m.id.clone(),
                author: m.author.short(),
                time_ms: m.timestamp.wall_ms(),
                text: m.text.clone(),
            })
            .collect();
        if sources.is_empty() {
            return Err(NodeError::BadRequest(format!(
                "channel {name} has no messages{} to report on",
                since_ms.map_or(String::new(), |s| format!(
                    " since {}",
                    fieldmesh_core::rfc3339(s)
                ))
            )));
        }
        if sources.len() > SITREP_MAX_INPUTS {
            sources.drain(..sources.len() - SITREP_MAX_INPUTS);
        }
        let unit = unit.map_or_else(|| fieldmesh_ai::facts::normalise_unit(&name), str::to_owned);
        let mut rep = sitrep::build(&unit, &sources);
        let inputs = rep.inputs.clone();
        let mut prov = self.provenance("sitrep", sitrep::TEMPLATE_ID, &inputs, "low");
        let mut notes: Vec<String> = Vec::new();
        let task = &self.profile().models.sitrep;
        match (no_model, task.enabled_model()) {
            (true, _) => notes.push("model not used (--no-model)".into()),
            (false, None) => notes.push(format!(
                "profile {} has no SITREP model",
                self.profile().name
            )),
            (false, Some(model)) => match self.llm(model, task.threads) {
                Err(e) => notes.push(format!("model {model} unavailable: {e}")),
                Ok((llm, manifest)) => {
                    let prompt =
                        sitrep_prompt(&llm, &rep, &sources, task.max_context_tokens as usize);
                    let opts = GenOptions {
                        max_tokens: 160,
                        max_context: task.max_context_tokens as usize,
                        ..GenOptions::default()
                    };
                    match prompt.and_then(|ids| llm.generate_ids(ids, &opts, |_| true)) {
                        Err(e) => notes.push(format!("generation failed: {e}")),
                        Ok(g) => {
                            prov["model"] =
                                json!({"name": manifest.name, "sha256": manifest.sha256});
                            prov["prompt_template"] = json!(SITREP_PROSE_TEMPLATE);
                            prov["generation"] = json!({
                                "prompt_tokens": g.prompt_tokens, "generated_tokens": g.generated_tokens,
                                "tokens_per_s": g.tokens_per_s(),
                            });
                            match sitrep::accept_prose(&mut rep, &g.text, &manifest.name, &sources)
                            {
                                Ok(()) => {
                                    notes.push("model prose validated against the sources".into())
                                }
                                Err(bad) => {
                                    prov["rejected_prose"] = json!(g.text);
                                    prov["unsupported_facts"] = json!(bad);
                                    notes.push(format!(
                                        "model prose refused: {} fact(s) absent from the sources; extractive SITREP kept",
                                        bad.len()
                                    ));
                                }
                            }
                        }
                    }
                }
            },
        }
        prov["confidence"] = json!(rep.confidence);
        prov["notes"] = json!(notes);
        let precedence = if rep.casualties.total() > 0 {
            Precedence::Priority
        } else {
            Precedence::Routine
        };
        let text = sitrep::render(&rep);
        let mut ai = prov.clone();
        ai["sitrep"] = serde_json::to_value(&rep).map_err(internal)?;
        let posted = match self.post_ai(&id, &text, precedence, None, vec![], &ai) {
            Ok(p) => p,
            Err(NodeError::TooLarge(_) | NodeError::BadRequest(_)) => {
                // Too big for one envelope: the full SITREP travels as an attachment,
                // the message keeps the rendered text and the provenance.
                let full = serde_json::to_vec_pretty(&ai).map_err(internal)?;
                let att = crate::ops::Ops::put_blob(
                    self,
                    &id.to_hex(),
                    "sitrep.json",
                    "application/json",
                    &full,
                )?;
                let mut slim = prov.clone();
                slim["sitrep_attachment"] = json!(att.hash);
                let short: String = text
                    .chars()
                    .take(fieldmesh_channel::MAX_TEXT_BYTES / 2)
                    .collect();
                self.post_ai(&id, &short, precedence, None, vec![att], &slim)?
            }
            Err(e) => return Err(e),
        };
        self.audit(json!({"event": "ai_product", "task": "sitrep", "message": posted.id, "inputs": inputs.len(), "confidence": rep.confidence}), false);
        Ok(
            json!({"posted": posted, "state": "draft", "confidence": rep.confidence, "notes": notes, "text": text, "sitrep": rep, "provenance": prov}),
        )
    }

    fn review(&self, message: &str, verdict: &str) -> Result<Value, NodeError> {
        let (cid, m) = self.find_message(message)?;
        let posted = self.write(&cid.to_hex(), |ch, me, hlc| {
            ch.review(me, hlc, message, verdict)
        })?;
        let m2 = self.find_message(message).map(|(_, m)| m).unwrap_or(m);
        self.audit(json!({"event": "review", "message": message, "verdict": verdict, "task": task_of(&m2)}), true);
        Ok(
            json!({"posted": posted, "message": message, "state": review_state(&m2), "reviews": m2.reviews}),
        )
    }

    fn board(&self) -> Result<Value, NodeError> {
        let mut entries = Vec::new();
        for (_, _, m) in self.readable_messages()? {
            let Some(a) = annotation(&m) else { continue };
            if a.get("task").and_then(Value::as_str) != Some("sitrep") {
                continue;
            }
            let sitrep = match a.get("sitrep") {
                Some(s) => serde_json::from_value(s.clone()).ok(),
                None => a
                    .get("sitrep_attachment")
                    .and_then(|_| crate::ops::Ops::get_attachment(self, &m.id, 0).ok())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|v| v.get("sitrep").cloned())
                    .and_then(|s| serde_json::from_value(s).ok()),
            };
            let Some(sitrep) = sitrep else { continue };
            entries.push(fieldmesh_ai::board::Entry {
                id: m.id.clone(),
                state: review_state(&m).to_owned(),
                producer: m.author.short(),
                sitrep,
            });
        }
        let board = fieldmesh_ai::board::build(&entries);
        let text = fieldmesh_ai::board::render(&board);
        Ok(json!({"board": board, "text": text}))
    }

    fn triage_list(&self) -> Result<Value, NodeError> {
        let mut out = Vec::new();
        for (cid, name, m) in self.readable_messages()? {
            let Some(a) = annotation(&m) else { continue };
            if a.get("task").and_then(Value::as_str) != Some("triage") {
                continue;
            }
            out.push(json!({
                "channel": cid, "channel_name": name, "message": m.id, "time": m.time,
                "author": m.author.short(), "precedence": m.precedence, "text": m.text,
                "reason": a.pointer("/triage/reason"), "category": a.pointer("/triage/category"),
                "requested_precedence": a.get("requested_precedence"),
                "state": review_state(&m), "reviews": m.reviews,
            }));
        }
        Ok(json!({"flagged": out}))
    }

    /// Triage at posting time: raises precedence and annotates the message when its text
    /// reports casualties or requests MEDEVAC. Never lowers a precedence.
    pub(crate) fn triage_post(
        &self,
        text: &str,
        requested: Precedence,
    ) -> (Precedence, Option<Value>) {
        let verdict = match fieldmesh_ai::triage::triage(text) {
            Some(t) => Some(t),
            None => match self.semantic_triage(text) {
                Ok(t) => t,
                Err(e) => {
                    // Once per process: a node without a model posts many messages.
                    static WARNED: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::debug!(%e, "semantic triage unavailable; rules only");
                    } else {
                        tracing::warn!(%e, "semantic triage unavailable; rules only (said once)");
                    }
                    None
                }
            },
        };
        let Some(t) = verdict else {
            return (requested, None);
        };
        let precedence = requested.max(t.raise_to);
        let mut prov = self.provenance("triage", fieldmesh_ai::triage::RULES_ID, &[], "rule");
        prov["triage"] = serde_json::to_value(&t).unwrap_or(Value::Null);
        prov["requested_precedence"] = json!(requested);
        prov["flag"] = json!("for human review");
        (precedence, Some(prov))
    }
}

/// The prompt for SITREP prose: the extracted facts, then the source messages, newest
/// last, cut from the oldest to fit the context.
fn sitrep_prompt(
    llm: &Llm,
    rep: &sitrep::Sitrep,
    sources: &[Source],
    max_context: usize,
) -> Result<Vec<u32>, fieldmesh_ai::llm::LlmError> {
    let system = "You write short military situation report summaries. Use only the facts given. \
                  Do not invent numbers, grid references, times or unit names. Two to four sentences.";
    let mut facts = format!("Unit: {}\n", rep.unit);
    if let Some(l) = &rep.location {
        facts.push_str(&format!("Location: grid {}\n", l.value));
    }
    let c = &rep.casualties;
    facts.push_str(&format!("Casualties: {} KIA, {} WIA\n", c.kia, c.wia));
    for e in &rep.enemy {
        facts.push_str(&format!("Enemy: {}\n", e.activity));
    }
    for r in &rep.requests {
        facts.push_str(&format!("Request: {}\n", r.value));
    }
    let budget_tokens = max_context.saturating_sub(220);
    let mut msgs: Vec<String> = Vec::new();
    let mut used = llm.encode(&facts).map(|v| v.len()).unwrap_or(0) + 80;
    for s in sources.iter().rev() {
        let line = format!("- {}\n", s.text);
        let n = llm.encode(&line).map(|v| v.len()).unwrap_or(line.len() / 3);
        if used + n > budget_tokens {
            break;
        }
        used += n;
        msgs.push(line);
    }
    msgs.reverse();
    let user = format!(
        "Facts:\n{facts}\nMessages:\n{}\nWrite the summary.",
        msgs.concat()
    );
    // Field messages are text: a special token spelled in one stays text.
    llm.chat_ids(system, &user)
}

/// Prompt template id for model translations.
pub const TRANSLATE_TEMPLATE: &str = "translate/1";
/// Segments whose mean token probability is below this are shown as low confidence.
pub const LOW_CONFIDENCE: f32 = 0.6;

impl Node {
    fn verified(
        &self,
        name: &str,
        format: crate::models::Format,
    ) -> Result<crate::models::Verified, NodeError> {
        let v = self
            .model_registry()?
            .resolve(name)
            .map_err(|e| NodeError::Forbidden(format!("{e:#}")))?;
        if v.manifest.format != format {
            return Err(NodeError::BadRequest(format!(
                "model {name} is {:?}, not {format:?}",
                v.manifest.format
            )));
        }
        Ok(v)
    }

    fn embedder(
        &self,
    ) -> Result<
        Option<(
            Arc<fieldmesh_ai::embed::Embedder>,
            crate::models::ManifestBody,
        )>,
        NodeError,
    > {
        let task = &self.profile().models.embed;
        let Some(name) = task.enabled_model() else {
            return Ok(None);
        };
        let mut slot = lock(&self.ai.embedder);
        if let Some(e) = slot.as_ref() {
            return Ok(Some(e.clone()));
        }
        let v = self.verified(name, crate::models::Format::Bert)?;
        let e = fieldmesh_ai::embed::Embedder::load(&v.dir, task_threads(task.threads))
            .map_err(internal)?;
        let entry = (Arc::new(e), v.manifest);
        *slot = Some(entry.clone());
        Ok(Some(entry))
    }

    fn whisper(
        &self,
    ) -> Result<
        (
            Arc<fieldmesh_ai::whisper::Transcriber>,
            crate::models::ManifestBody,
        ),
        NodeError,
    > {
        let task = &self.profile().models.transcribe;
        let name = task.enabled_model().ok_or_else(|| {
            NodeError::BadRequest(format!(
                "profile {} has no transcription model",
                self.profile().name
            ))
        })?;
        let mut slot = lock(&self.ai.whisper);
        if let Some(w) = slot.as_ref() {
            return Ok(w.clone());
        }
        let v = self.verified(name, crate::models::Format::WhisperGgml)?;
        let t =
            fieldmesh_ai::whisper::Transcriber::load(&v.main_file(), task_threads(task.threads))
                .map_err(internal)?;
        let entry = (Arc::new(t), v.manifest);
        *slot = Some(entry.clone());
        Ok(entry)
    }

    fn translate(&self, message: &str, to: &str, from: Option<&str>) -> Result<Value, NodeError> {
        use fieldmesh_ai::translate as tr;
        let (cid, m) = self.find_message(message)?;
        if m.redacted || m.text.trim().is_empty() {
            return Err(NodeError::BadRequest(format!(
                "message {message} has no text to translate"
            )));
        }
        let to = tr::language(to)
            .map_err(|e| NodeError::BadRequest(e.to_string()))?
            .0;
        let from = match from {
            Some(f) => {
                tr::language(f)
                    .map_err(|e| NodeError::BadRequest(e.to_string()))?
                    .0
            }
            None => tr::detect(&m.text).unwrap_or("en"),
        };
        if from == to {
            return Err(NodeError::BadRequest(format!(
                "message {message} is already in {to}"
            )));
        }
        let mut notes: Vec<String> = Vec::new();
        let mut prov = self.provenance(
            "translation",
            TRANSLATE_TEMPLATE,
            std::slice::from_ref(&m.id),
            "low",
        );
        let mut result: Option<(String, String)> = None;
        let task = &self.profile().models.translate;
        if let Some(model) = task.enabled_model() {
            match self.llm(model, task.threads) {
                Err(e) => notes.push(format!("model {model} unavailable: {e}")),
                Ok((llm, manifest)) => {
                    let (system, user) = tr::prompt(&m.text, from, to);
                    let n = llm.encode(&m.text).map(|v| v.len()).unwrap_or(256);
                    let opts = GenOptions {
                        max_tokens: (n * 3 + 32).min(768),
                        max_context: task.max_context_tokens as usize,
                        repeat_penalty: 1.0,
                        ..GenOptions::default()
                    };
                    let prompt = llm.chat_ids(&system, &user);
                    match prompt.and_then(|ids| llm.generate_ids(ids, &opts, |_| true)) {
                        Err(e) => notes.push(format!("model translation failed: {e}")),
                        Ok(g) => match tr::check_model_output(&m.text, &g.text, to) {
                            Ok(()) => {
                                prov["model"] =
                                    json!({"name": manifest.name, "sha256": manifest.sha256});
                                prov["confidence"] = json!("medium");
                                result = Some((
                                    g.text.trim().to_owned(),
                                    format!("model {}", manifest.name),
                                ));
                            }
                            Err(why) => {
                                prov["rejected_output"] = json!(g.text);
                                notes.push(format!("model translation refused: {why}"));
                            }
                        },
                    }
                }
            }
        }
        if result.is_none() {
            match tr::apertium(&m.text, from, to) {
                Ok(t) => {
                    let missing = tr::missing_facts(&m.text, &t);
                    if !missing.is_empty() {
                        notes.push(format!(
                            "rule-based translation altered: {}",
                            missing.join(", ")
                        ));
                    }
                    prov["template"] = json!(format!(
                        "apertium/{}",
                        tr::apertium_mode(from, to).unwrap_or_default()
                    ));
                    prov["confidence"] = json!(if missing.is_empty() { "rule" } else { "low" });
                    result = Some((t, "apertium (rule-based)".into()));
                }
                Err(e) => notes.push(e.to_string()),
            }
        }
        let Some((text, backend)) = result else {
            return Err(NodeError::BadRequest(format!(
                "cannot translate {from} -> {to} here: {}",
                notes.join("; ")
            )));
        };
        prov["from"] = json!(from);
        prov["to"] = json!(to);
        prov["original"] = json!(m.id);
        prov["backend"] = json!(backend);
        prov["notes"] = json!(notes);
        let posted = self.post_ai(&cid, &text, m.precedence, Some(&m.id), vec![], &prov)?;
        self.audit(json!({"event": "ai_product", "task": "translation", "message": posted.id, "original": m.id, "backend": backend}), false);
        Ok(
            json!({"posted": posted, "text": text, "from": from, "to": to, "backend": backend, "notes": notes, "provenance": prov}),
        )
    }

    fn transcribe(&self, message: &str) -> Result<Value, NodeError> {
        use fieldmesh_ai::whisper as w;
        let (cid, m) = self.find_message(message)?;
        let idx = m
            .attachments
            .iter()
            .position(|a| {
                a.mime.starts_with("audio/") || a.name.to_ascii_lowercase().ends_with(".wav")
            })
            .ok_or_else(|| {
                NodeError::BadRequest(format!("message {message} has no audio attachment"))
            })?;
        let bytes = crate::ops::Ops::get_attachment(self, message, idx)?;
        let (samples, rate, _) = w::read_wav(&bytes)
            .map_err(|e| NodeError::BadRequest(format!("{}: {e}", m.attachments[idx].name)))?;
        let samples = w::resample_to_16k(&samples, rate);
        let (model, manifest) = self.whisper()?;
        let t = model.transcribe(&samples, None).map_err(internal)?;
        let mut text = String::new();
        let mut low = 0;
        for s in &t.segments {
            let seg = s.text.trim();
            if seg.is_empty() {
                continue;
            }
            if !text.is_empty() {
                text.push(' ');
            }
            if s.confidence < LOW_CONFIDENCE {
                low += 1;
                text.push_str(&format!("[low confidence: {seg}]"));
            } else {
                text.push_str(seg);
            }
        }
        if text.is_empty() {
            text = "[no speech recognised]".into();
        }
        let confidence = if t.confidence >= LOW_CONFIDENCE && low == 0 {
            "medium"
        } else {
            "low"
        };
        let mut prov = self.provenance(
            "transcript",
            "whisper/1",
            std::slice::from_ref(&m.id),
            confidence,
        );
        prov["model"] = json!({"name": manifest.name, "sha256": manifest.sha256});
        prov["original"] = json!(m.id);
        prov["audio"] = json!(m.attachments[idx]);
        prov["transcript"] = serde_json::to_value(&t).map_err(internal)?;
        // What was said is triaged like what was typed.
        let (precedence, triage) = self.triage_post(&t.text, m.precedence);
        if let Some(tr) = triage {
            prov["triage"] = tr["triage"].clone();
        }
        let posted = self.post_ai(&cid, &text, precedence, Some(&m.id), vec![], &prov)?;
        self.audit(json!({"event": "ai_product", "task": "transcript", "message": posted.id, "original": m.id}), false);
        Ok(
            json!({"posted": posted, "text": text, "confidence": confidence, "transcript": t, "precedence": precedence}),
        )
    }

    fn search(&self, query: &str, limit: usize) -> Result<Value, NodeError> {
        if query.trim().is_empty() {
            return Err(NodeError::BadRequest("empty query".into()));
        }
        let started = std::time::Instant::now();
        let docs: Vec<(ChannelId, String, MessageView)> = self
            .readable_messages()?
            .into_iter()
            .filter(|(_, _, m)| !m.redacted && !m.text.trim().is_empty())
            .collect();
        let mut notes = Vec::new();
        let embedder = match self.embedder() {
            Ok(e) => e,
            Err(e) => {
                notes.push(format!("semantic search off: {e}"));
                None
            }
        };
        let (vectors, qvec, model) = match &embedder {
            Some((e, manifest)) => {
                let texts: Vec<&str> = docs.iter().map(|(_, _, m)| m.text.as_str()).collect();
                let ids: Vec<String> = docs.iter().map(|(_, _, m)| m.id.clone()).collect();
                let vecs = self.embeddings(e, manifest, &ids, &texts)?;
                let q = e.embed(&[query]).map_err(internal)?.pop();
                (Some(vecs), q, Some(manifest.name.clone()))
            }
            None => (None, None, None),
        };
        let mut index =
            fieldmesh_ai::search::Index::new(embedder.as_ref().map_or(0, |(e, _)| e.dim()));
        for (i, (_, _, m)) in docs.iter().enumerate() {
            index.add(&m.text, vectors.as_ref().map(|v| v[i].as_slice()));
        }
        let hits = index.search(query, qvec.as_deref(), limit.clamp(1, 100));
        let results: Vec<Value> = hits
            .iter()
            .map(|h| {
                let (cid, name, m) = &docs[h.doc];
                json!({"channel": cid, "channel_name": name, "message": m.id, "time": m.time,
                       "author": m.author.short(), "text": m.text, "score": h.score,
                       "keyword_rank": h.keyword_rank, "semantic_rank": h.semantic_rank, "similarity": h.similarity})
            })
            .collect();
        Ok(
            json!({"query": query, "results": results, "searched": docs.len(), "embedding_model": model,
                  "ms": started.elapsed().as_secs_f64() * 1e3, "notes": notes}),
        )
    }

    /// Embeddings of `texts`, from the on-disk cache (keyed by message id and text hash)
    /// or computed and appended to it.
    fn embeddings(
        &self,
        e: &fieldmesh_ai::embed::Embedder,
        manifest: &crate::models::ManifestBody,
        ids: &[String],
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, NodeError> {
        use std::io::{Read, Write};
        let key = |id: &str, text: &str| {
            format!(
                "{id}:{}",
                &hex::encode(fieldmesh_core::sha256(text.as_bytes()))[..16]
            )
        };
        let dim = e.dim();
        let mut cache: HashMap<String, Vec<f32>> = HashMap::new();
        let path = self.home.as_ref().map(|h| {
            h.join("search")
                .join(format!("embeddings-{}.bin", &manifest.sha256[..16]))
        });
        if let Some(p) = &path
            && let Ok(mut f) = std::fs::File::open(p)
        {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(internal)?;
            let mut at = 0;
            // Records: u16 key length, key, dim f32 (LE). A torn tail is ignored.
            while at + 2 <= buf.len() {
                let n = u16::from_le_bytes([buf[at], buf[at + 1]]) as usize;
                let end = at + 2 + n + dim * 4;
                if end > buf.len() {
                    break;
                }
                let k = String::from_utf8_lossy(&buf[at + 2..at + 2 + n]).into_owned();
                let v = buf[at + 2 + n..end]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                cache.insert(k, v);
                at = end;
            }
        }
        let keys: Vec<String> = ids.iter().zip(texts).map(|(i, t)| key(i, t)).collect();
        let missing: Vec<usize> = (0..ids.len())
            .filter(|&i| !cache.contains_key(&keys[i]))
            .collect();
        if !missing.is_empty() {
            let batch: Vec<&str> = missing.iter().map(|&i| texts[i]).collect();
            let vecs = e.embed(&batch).map_err(internal)?;
            let mut out = Vec::new();
            for (&i, v) in missing.iter().zip(vecs) {
                out.extend_from_slice(&(keys[i].len() as u16).to_le_bytes());
                out.extend_from_slice(keys[i].as_bytes());
                for x in &v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                cache.insert(keys[i].clone(), v);
            }
            if let Some(p) = &path {
                let write = || -> std::io::Result<()> {
                    std::fs::create_dir_all(p.parent().unwrap_or(std::path::Path::new(".")))?;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?;
                    f.write_all(&out)
                };
                if let Err(err) = write() {
                    tracing::warn!(%err, "could not extend the embedding cache");
                }
            }
        }
        Ok(keys
            .iter()
            .map(|k| cache.get(k).cloned().unwrap_or_else(|| vec![0.0; dim]))
            .collect())
    }
}

/// Node-local AI settings (`HOME/ai.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSettings {
    /// Channel id (hex) → target language of its automatic translations.
    #[serde(default)]
    pub auto_translate: std::collections::BTreeMap<String, String>,
}

impl Node {
    fn settings_path(&self) -> Result<std::path::PathBuf, NodeError> {
        self.home
            .as_ref()
            .map(|h| h.join("ai.json"))
            .ok_or_else(|| NodeError::BadRequest("this node has no home for settings".into()))
    }

    pub(crate) fn ai_settings(&self) -> Result<AiSettings, NodeError> {
        match std::fs::read(self.settings_path()?) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| NodeError::Internal(format!("ai.json is malformed: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AiSettings::default()),
            Err(e) => Err(internal(e)),
        }
    }

    fn set_auto_translate(&self, channel: &str, to: Option<&str>) -> Result<Value, NodeError> {
        let id = self.resolve(channel)?;
        let mut s = self.ai_settings()?;
        match to {
            Some(lang) => {
                let code = fieldmesh_ai::translate::language(lang)
                    .map_err(|e| NodeError::BadRequest(e.to_string()))?
                    .0;
                s.auto_translate.insert(id.to_hex(), code.to_owned());
            }
            None => {
                s.auto_translate.remove(&id.to_hex());
            }
        }
        let path = self.settings_path()?;
        crate::home::write_atomic(&path, &serde_json::to_vec_pretty(&s).map_err(internal)?)
            .map_err(|e| internal(format!("{e:#}")))?;
        Ok(json!({"channel": id, "auto_translate": s.auto_translate.get(&id.to_hex())}))
    }

    /// Translates `m` if its channel has automatic translation on and it is a person's
    /// message in another language that has no translation into that language yet.
    pub(crate) fn auto_translate(
        &self,
        channel: &ChannelId,
        m: &MessageView,
    ) -> Result<Option<Value>, NodeError> {
        let Some(to) = self
            .ai_settings()?
            .auto_translate
            .get(&channel.to_hex())
            .cloned()
        else {
            return Ok(None);
        };
        if m.redacted
            || m.pending
            || m.text.trim().is_empty()
            || task_of(m).is_some_and(|t| t != "triage")
        {
            return Ok(None);
        }
        let from = fieldmesh_ai::translate::detect(&m.text).unwrap_or("en");
        if from == to {
            return Ok(None);
        }
        let done = self.with_channel(channel, |ch| {
            Ok(ch.messages().iter().any(|x| {
                x.reply_to.as_deref() == Some(m.id.as_str())
                    && annotation(x)
                        .is_some_and(|a| a["task"] == "translation" && a["to"] == to.as_str())
            }))
        })?;
        if done {
            return Ok(None);
        }
        self.translate(&m.id, &to, None).map(Some)
    }

    /// The daemon's AI duty: automatic translation of new messages.
    pub fn start_ai_thread(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        let mut rx = self.subscribe();
        std::thread::Builder::new()
            .name("ai-duties".into())
            .spawn(move || {
                loop {
                    let ev = match rx.blocking_recv() {
                        Ok(ev) => ev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(n, "ai duties fell behind; skipped events");
                            continue;
                        }
                        Err(_) => return,
                    };
                    let Some(node) = node.upgrade() else { return };
                    if let Err(e) = node.auto_translate(&ev.channel, &ev.message) {
                        tracing::warn!(%e, message = %ev.message.id, "automatic translation failed");
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(%e, "could not start the AI duty thread"));
    }
}

impl Node {
    /// The embedding check behind the triage rules, when the profile has an embedding
    /// model. Exemplar embeddings are cached with the search embeddings.
    fn semantic_triage(
        &self,
        text: &str,
    ) -> Result<Option<fieldmesh_ai::triage::Triage>, NodeError> {
        let Some((e, manifest)) = self.embedder()? else {
            return Ok(None);
        };
        let sem = {
            let mut slot = lock(&self.ai.semantic_triage);
            match slot.as_ref() {
                Some(s) => s.clone(),
                None => {
                    let ex = fieldmesh_ai::triage::exemplars();
                    let ids: Vec<String> = (0..ex.len())
                        .map(|i| format!("triage-exemplar-{i}"))
                        .collect();
                    let texts: Vec<&str> = ex.iter().map(|(t, _)| t.as_str()).collect();
                    let vecs = self.embeddings(&e, &manifest, &ids, &texts)?;
                    let s = Arc::new(fieldmesh_ai::triage::Semantic::from_parts(
                        vecs.into_iter()
                            .zip(ex)
                            .map(|(v, (t, l))| (v, l, t))
                            .collect(),
                    ));
                    *slot = Some(s.clone());
                    s
                }
            }
        };
        let v = e.embed(&[text]).map_err(internal)?;
        Ok(v.first().and_then(|v| sem.triage(text, v)))
    }
}

/// A task's threads from the profile, never more than the cores this process may use: a
/// profile written for a 4-core laptop must not oversubscribe a 2-core one, where the
/// inference workers (which spin while they wait) then run several times slower.
fn task_threads(profile: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (profile as usize).clamp(1, cores)
}
