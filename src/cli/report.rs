//! How a reconcile pass reads for people: the plan, one line per action, and the results.
//! Printed by `sync` and `demo`; `describe` is also the `detail` of `sync --json`.

use mbg_provision::reconcile::{Action, Adoption, Owner, PassReport, Status};

fn sign(action: &Action) -> &'static str {
    match action {
        Action::Create { .. } => "+",
        Action::Update { .. } => "~",
        Action::Adopt { .. } => "<",
        Action::Delete { .. } => "-",
        Action::Forget { .. } => ".",
        Action::Report { .. } => "!",
    }
}

/// One planned action, for humans: where it goes, what changes, or the fix for a problem.
pub fn describe(report: &PassReport, action: &Action) -> String {
    let node = |id: &i64| {
        report
            .extensions
            .get(id)
            .map_or(String::new(), |e| e.node_name.clone())
    };
    match action {
        Action::Create {
            extension_id, icp, ..
        } => format!("node {} -> ICP {icp}", node(extension_id)),
        Action::Update { guid, changes, .. } => {
            format!("SIP user {guid}: {}", changes.join(", "))
        }
        Action::Adopt {
            guid,
            changes,
            proof,
            ..
        } => format!(
            "SIP user {guid} {}: take it over, overwrite {}",
            match proof {
                Adoption::ExactMatch => "has this number under the right ICP",
                Adoption::OwnCredentials => "carries this extension's credentials (ours)",
            },
            if changes.is_empty() {
                "nothing".to_string()
            } else {
                changes.join(", ")
            }
        ),
        Action::Delete { guid, owner, .. } => match owner {
            Owner::Extension(_) => format!("SIP user {guid}"),
            Owner::Released { .. } => format!("SIP user {guid} of a deleted extension"),
            Owner::Duplicate => {
                format!("SIP user {guid}: a second copy with this extension's credentials")
            }
        },
        Action::Forget { guid, .. } => format!(
            "{} is not on the MBG (or is another row's): clear the record",
            guid.as_deref()
                .map_or("no SIP user".to_string(), |g| format!("SIP user {g}"))
        ),
        Action::Report { problem, .. } => problem.fix(),
    }
}

pub fn print_plan(report: &PassReport) {
    let plan = &report.plan;
    if plan.actions.is_empty() {
        println!("No changes: the MBG matches the database.");
        return;
    }
    for action in &plan.actions {
        println!(
            "  {} {:<8} {:<11} {}",
            sign(action),
            action.verb(),
            action.number(),
            describe(report, action)
        );
    }
    let count = |verb: &str| plan.actions.iter().filter(|a| a.verb() == verb).count();
    println!(
        "Plan: {} to create, {} to update, {} to adopt, {} to delete, {} problem(s) to fix.",
        count("create"),
        count("update"),
        count("adopt"),
        count("delete"),
        count("problem")
    );
}

pub fn print_results(report: &PassReport) {
    let Some(applied) = &report.applied else {
        println!("(dry run: nothing was changed)");
        return;
    };
    let count = |status: Status| {
        applied
            .outcomes
            .iter()
            .filter(|o| o.status == status)
            .count()
    };
    for outcome in applied
        .outcomes
        .iter()
        .filter(|o| !matches!(o.status, Status::Done | Status::NeedsAttention))
    {
        println!(
            "  {:?} {} {}: {}",
            outcome.status, outcome.verb, outcome.number, outcome.detail
        );
    }
    println!(
        "Applied: {} done, {} failed (retried later), {} need attention, {} skipped, {} changed meanwhile (left for the next pass); {} MBG calls.",
        count(Status::Done),
        count(Status::Failed),
        count(Status::NeedsAttention),
        count(Status::Skipped),
        count(Status::Stale),
        applied.calls
    );
}
