use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row, ValueRef};

use super::error::{classify, quote};
use super::transaction::{Durability, Transaction};
use super::{
    AuditEntry, Backend, BadRow, Extension, ExtensionFilter, ExtensionKind, ExtensionRows,
    ExtensionSpec, ExtensionState, NotFound, Result, RowKeys, StateUpdate, Store, StoreError,
    get_bool, now,
};

// A LEFT JOIN, so that an extension whose node was deleted behind our back (foreign keys off in a
// DBA's shell, or a dropped constraint) is reported instead of silently missing.
const EXTENSION_SELECT: &str =
    "SELECT e.id, e.node_id, n.name AS node_name, n.address AS node_address,
        e.number, e.kind, e.sip_password, e.use_remote_auth, e.remote_auth_name,
        e.remote_auth_password, e.mbg_device_id, e.provisioned_by_us, e.state, e.last_error,
        e.attempts, e.next_attempt_at, e.version, e.updated_at
    FROM extensions e LEFT JOIN nodes n ON n.id = e.node_id";

/// The column that makes a row unusable, and why.
type Field<T> = std::result::Result<T, (&'static str, String)>;

/// Reads a column as `T`; a failure says what was expected, never the value (which may be a
/// credential).
fn read<'r, T>(row: &'r AnyRow, column: &'static str, expected: &str) -> Field<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get::<T, _>(column).map_err(|_| {
        let is_null = row.try_get_raw(column).is_ok_and(|v| v.is_null());
        let reason = if is_null {
            "is NULL".to_string()
        } else {
            format!("is not {expected}")
        };
        (column, reason)
    })
}

fn read_bool(row: &AnyRow, column: &'static str) -> Field<bool> {
    get_bool(row, column).map_err(|e| match e {
        // An integer out of range: its value is no secret, and it tells the DBA what to fix.
        sqlx::Error::Decode(why) => (column, format!("is {why}")),
        _ => (column, "is not a boolean (0 or 1)".to_string()),
    })
}

fn read_text(row: &AnyRow, column: &'static str) -> Field<Option<String>> {
    Ok(read::<Option<String>>(row, column, "text")?.filter(|s| !s.is_empty()))
}

fn read_secret(row: &AnyRow, column: &'static str) -> Field<Option<SecretString>> {
    Ok(read_text(row, column)?.map(SecretString::from))
}

fn read_number(row: &AnyRow) -> Field<String> {
    let number: String = read(row, "number", "text")?;
    validate_number(&number).map_err(|_| {
        (
            "number",
            format!("{} is not 1 to 10 digits", quote(&number)),
        )
    })?;
    Ok(number)
}

fn read_kind(row: &AnyRow) -> Field<ExtensionKind> {
    let kind: String = read(row, "kind", "text")?;
    match kind.as_str() {
        "sip" => Ok(ExtensionKind::Sip),
        "sip_hot_desk" => Ok(ExtensionKind::SipHotDesk),
        _ => Err((
            "kind",
            format!("{} is not sip or sip_hot_desk", quote(&kind)),
        )),
    }
}

fn read_state(row: &AnyRow) -> Field<ExtensionState> {
    let state: String = read(row, "state", "text")?;
    state.parse().map_err(|_| {
        (
            "state",
            format!(
                "{} is not idle, pending, provisioned, failed or needs_attention",
                quote(&state)
            ),
        )
    })
}

fn extension_from_row(row: &AnyRow) -> Field<Extension> {
    let node_id: i64 = read(row, "node_id", "an integer")?;
    let (Some(node_name), Some(node_address)) = (
        read::<Option<String>>(row, "node_name", "text")?,
        read::<Option<String>>(row, "node_address", "text")?,
    ) else {
        return Err(("node_id", format!("node {node_id} does not exist")));
    };
    let attempts: i64 = read(row, "attempts", "an integer")?;
    Ok(Extension {
        id: read(row, "id", "an integer")?,
        node_id,
        node_name,
        node_address,
        number: read_number(row)?,
        kind: read_kind(row)?,
        sip_password: read_secret(row, "sip_password")?
            .ok_or(("sip_password", "is empty".to_string()))?,
        use_remote_auth: read_bool(row, "use_remote_auth")?,
        remote_auth_name: read_text(row, "remote_auth_name")?,
        remote_auth_password: read_secret(row, "remote_auth_password")?,
        mbg_device_id: read_text(row, "mbg_device_id")?,
        provisioned_by_us: read_bool(row, "provisioned_by_us")?,
        state: read_state(row)?,
        last_error: read(row, "last_error", "text")?,
        attempts: u32::try_from(attempts)
            .map_err(|_| ("attempts", format!("{attempts} is not a retry count")))?,
        next_attempt_at: read(row, "next_attempt_at", "an integer (epoch seconds)")?,
        version: read(row, "version", "an integer")?,
        updated_at: read(row, "updated_at", "an integer (epoch seconds)")?,
    })
}

/// The row as an extension, or what is wrong with it. Only a row without a readable id is an
/// error: without it, nobody can point at the row.
fn decode(row: &AnyRow) -> Result<Result<Extension, BadRow>> {
    let id: i64 = row.try_get("id").map_err(StoreError::Database)?;
    Ok(extension_from_row(row).map_err(|(column, reason)| BadRow {
        id,
        number: row.try_get::<String, _>("number").ok(),
        mbg_device_id: read_text(row, "mbg_device_id").ok().flatten(),
        column,
        reason,
    }))
}

/// For lookups of one row: a bad row is an error that says which row and column.
fn decode_one(row: &AnyRow) -> Result<Extension> {
    decode(row)?.map_err(StoreError::BadRow)
}

/// The number as the database stores it; checked here too so that a bad number is reported the
/// same way on both backends and before any SQL runs.
pub fn validate_number(number: &str) -> Result<()> {
    if (1..=10).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "extension number",
            reason: format!("{} must be 1 to 10 digits", quote(number)),
        })
    }
}

impl Store {
    /// Creates the extension or changes the one with this number (moving it to `spec.node` if it
    /// lives elsewhere). `new_sip_password` is used only when the extension is created and the
    /// spec brings none. Returns the extension and whether it was created.
    pub async fn set_extension(
        &self,
        spec: &ExtensionSpec,
        new_sip_password: &SecretString,
    ) -> Result<(Extension, bool)> {
        let mut tx = Transaction::begin(&self.pool, self.backend, Durability::Normal).await?;
        let (id, created) = set_extension_in(&mut tx, spec, new_sip_password).await?;
        tx.commit().await?;
        Ok((self.extension(id).await?, created))
    }

    /// Applies every spec in one transaction: all rows or none. An error carries the 0-based
    /// index of the spec that failed. Returns how many extensions were created.
    ///
    /// Linear in the specs and the table: the nodes and the (node, number) of every extension are
    /// read once, every spec is checked against them before it is written, and the rows are
    /// written in batches, each one multi-row `INSERT … ON CONFLICT (node_id, number) DO UPDATE`
    /// (see [`Batches`]). A number that lives on one other node is moved there by its own
    /// `UPDATE`, as [`Store::set_extension`] does. The result is the same as applying the specs
    /// one by one, in order.
    pub async fn set_extensions(
        &self,
        specs: &[ExtensionSpec],
        mut new_sip_password: impl FnMut() -> SecretString,
    ) -> Result<usize, (usize, StoreError)> {
        let mut tx = Transaction::begin(&self.pool, self.backend, Durability::Normal)
            .await
            .map_err(|e| (0, e))?;
        let nodes: HashMap<String, i64> =
            sqlx::query_as::<_, (i64, String)>("SELECT id, name FROM nodes")
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| (0, StoreError::Database(e)))?
                .into_iter()
                .map(|(id, name)| (name, id))
                .collect();
        // Every number's nodes, oldest row first (the order `set_extension_in` looks them up in).
        // One scan: no index serves a lookup by number alone.
        let mut on_nodes: HashMap<String, Vec<i64>> = HashMap::new();
        let existing: Vec<(i64, String)> =
            sqlx::query_as("SELECT node_id, number FROM extensions ORDER BY id")
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| (0, StoreError::Database(e)))?;
        for (node_id, number) in existing {
            on_nodes.entry(number).or_default().push(node_id);
        }

        let mut batches = Batches::new(self.backend);
        let mut created = 0;
        for (index, spec) in specs.iter().enumerate() {
            let checked = check_spec(spec).and_then(|()| {
                nodes
                    .get(spec.node.trim())
                    .copied()
                    .ok_or_else(|| StoreError::NotFound(NotFound::Node(spec.node.clone())))
            });
            let node_id = checked.map_err(|e| (index, e))?;
            // A number already waiting in a batch is written first, so that this spec sees it
            // (and a statement never touches one row twice).
            if batches.holds(&spec.number) {
                batches.write_all(&mut tx).await?;
            }
            let nodes_of = on_nodes.entry(spec.number.clone()).or_default();
            match nodes_of.as_slice() {
                [] => {
                    nodes_of.push(node_id);
                    created += 1;
                }
                [only] if *only != node_id => {
                    // Moved from the number's only node: rare, so a statement of its own.
                    move_extension_in(&mut tx, spec, *only, node_id)
                        .await
                        .map_err(|e| (index, e))?;
                    nodes_of[0] = node_id;
                    continue;
                }
                on_this_node if on_this_node.contains(&node_id) => {
                    if spec.kind.is_none()
                        && spec.use_remote_auth.is_none()
                        && spec.sip_password.is_none()
                    {
                        continue; // restates the row: nothing to write
                    }
                }
                _ => return Err((index, several_nodes(&spec.number))),
            }
            let password = match &spec.sip_password {
                Some(given) => BatchPassword::Given(given),
                None => BatchPassword::New(new_sip_password()),
            };
            let row = BatchRow {
                index,
                node_id,
                spec,
                password,
            };
            batches.push(&mut tx, row).await?;
        }
        batches.write_all(&mut tx).await?;
        tx.commit().await.map_err(|e| (specs.len(), e))?;
        Ok(created)
    }

    /// [`Store::set_extension`] with remote credentials, in one transaction: all of it or
    /// nothing. Credentials the row already has are kept when they are the same, and replaced
    /// only when [`Store::rotate_remote_credentials`] would allow it; the row's audit entry is
    /// written with them.
    pub async fn set_extension_with_credentials(
        &self,
        spec: &ExtensionSpec,
        new_sip_password: &SecretString,
        credentials: Option<(&str, &SecretString)>,
        audit: &AuditEntry,
    ) -> Result<(Extension, bool)> {
        if let Some((name, password)) = credentials {
            crate::credentials::check_typed(name, password.expose_secret()).map_err(|e| {
                StoreError::Invalid {
                    field: e.field,
                    reason: e.reason,
                }
            })?;
        }
        // Credentials the MBG is told next must survive a power loss first.
        let durability = match credentials {
            Some(_) => Durability::Synced,
            None => Durability::Normal,
        };
        let mut tx = Transaction::begin(&self.pool, self.backend, durability).await?;
        // Whether the credentials may be replaced is judged on the row as it was: the write
        // below records a change of its own, which must not count as one still pending.
        let (node_id, target) = target_row(&mut tx, spec).await?;
        let mut replace = target.is_none();
        if let (Some(id), Some((name, password))) = (target, credentials) {
            let row = sqlx::query(AssertSqlSafe(format!("{EXTENSION_SELECT} WHERE e.id = $1")))
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::Database)?;
            let current = decode_one(&row)?;
            replace = current.remote_auth_name.as_deref() != Some(name)
                || current
                    .remote_auth_password
                    .as_ref()
                    .is_none_or(|p| p.expose_secret() != password.expose_secret());
            if replace {
                check_replaceable(&mut tx, &current).await?;
            }
        }
        let (id, created) = write_row(&mut tx, spec, node_id, target, new_sip_password).await?;
        if let Some((name, password)) = credentials.filter(|_| replace) {
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT number FROM extensions WHERE remote_auth_name = $1 AND id <> $2 LIMIT 1",
            )
            .bind(name)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
            if let Some(number) = holder {
                return Err(StoreError::Invalid {
                    field: "remote_auth_name",
                    reason: format!(
                        "{} is extension {number}'s already: a phone would log in as the other",
                        quote(name)
                    ),
                });
            }
            sqlx::query(
                "UPDATE extensions SET remote_auth_name = $2, remote_auth_password = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(name)
            .bind(password.expose_secret())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(e, |_| name.to_string()))?;
        }
        let audited = [super::PassWrite::Audit(audit.clone())];
        super::outcomes::write_chunk(&mut tx, self.backend, self.fence(), &audited).await?;
        tx.commit().await?;
        Ok((self.extension(id).await?, created))
    }

    /// One page of the console's extension list, in number order after `after` (a number and
    /// an id). A number prefix is a range on the `extensions_number` index, not a LIKE (which
    /// PostgreSQL's default collation cannot serve from an index), and the next page starts
    /// after the last row shown (keyset paging), so the last page costs what the first does.
    /// Rows that cannot be read are left out (`status` and `sync` list them).
    pub async fn extension_page(
        &self,
        filter: &ExtensionFilter,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<Extension>> {
        let mut conditions = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut bind = |value: String| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if let Some(prefix) = filter.prefix.as_deref().filter(|p| !p.is_empty()) {
            // Numbers are digits, and every collation sorts a digit before a letter.
            let (low, high) = (bind(prefix.to_string()), bind(format!("{prefix}a")));
            conditions.push(format!("e.number >= {low} AND e.number < {high}"));
        }
        if let Some(state) = filter.state {
            conditions.push(format!("e.state = {}", bind(state.as_str().to_string())));
        }
        if let Some(node) = &filter.node {
            conditions.push(format!("n.name = {}", bind(node.clone())));
        }
        let mut after_id = None;
        if let Some((number, id)) = after {
            let number = bind(number.to_string());
            after_id = Some(id);
            let id = format!("${}", binds.len() + 1);
            conditions.push(format!(
                "(e.number > {number} OR (e.number = {number} AND e.id > {id}))"
            ));
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "{EXTENSION_SELECT}{filter_sql} ORDER BY e.number, e.id LIMIT {}",
            limit.max(1)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for value in binds {
            query = query.bind(value);
        }
        if let Some(id) = after_id {
            query = query.bind(id);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Ok(extension) = decode(row)? {
                page.push(extension);
            }
        }
        Ok(page)
    }

    /// The extensions with these numbers (at most a page of them), for the console's list to
    /// follow; rows that cannot be read are left out.
    pub(crate) async fn extensions_by_numbers(&self, numbers: &[String]) -> Result<Vec<Extension>> {
        if numbers.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (1..=numbers.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "{EXTENSION_SELECT} WHERE e.number IN ({})",
            marks.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for number in numbers {
            query = query.bind(number);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Ok(extension) = decode(row)? {
                found.push(extension);
            }
        }
        Ok(found)
    }

    /// The node an existing extension is on, for a change that does not name one. `None` when
    /// the number does not exist; an error when it exists on several nodes (which one is meant
    /// must then be said).
    pub async fn node_of_number(&self, number: &str) -> Result<Option<String>> {
        let nodes: Vec<String> = sqlx::query_scalar(
            "SELECT nodes.name FROM extensions JOIN nodes ON nodes.id = extensions.node_id
              WHERE extensions.number = $1 ORDER BY extensions.id",
        )
        .bind(number)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        match nodes.as_slice() {
            [] => Ok(None),
            [node] => Ok(Some(node.clone())),
            _ => Err(several_nodes(number)),
        }
    }

    pub async fn extension(&self, id: i64) -> Result<Extension> {
        self.find_extension(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(NotFound::Extension(format!("with id {id}"))))
    }

    /// `None` when the row is gone (deleted since a change was recorded).
    pub async fn find_extension(&self, id: i64) -> Result<Option<Extension>> {
        let row = sqlx::query(AssertSqlSafe(format!("{EXTENSION_SELECT} WHERE e.id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        row.as_ref().map(decode_one).transpose()
    }

    pub async fn extension_by_number(&self, number: &str) -> Result<Extension> {
        match self.rows_numbered(number).await?.first() {
            Some(row) => decode_one(row),
            None => Err(StoreError::NotFound(NotFound::Extension(
                number.to_string(),
            ))),
        }
    }

    /// The rows of `number`, undecoded, by node name.
    async fn rows_numbered(&self, number: &str) -> Result<Vec<sqlx::any::AnyRow>> {
        sqlx::query(AssertSqlSafe(format!(
            "{EXTENSION_SELECT} WHERE e.number = $1 ORDER BY n.name"
        )))
        .bind(number)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Database)
    }

    /// The one extension `number` means: the one on `node` when given, else the number's only
    /// row. A number on several nodes without `node` is an error naming them, for the CLI's
    /// `--node` and the console's `?node=`.
    pub async fn extension_meant(&self, number: &str, node: Option<&str>) -> Result<Extension> {
        let mut found = self
            .rows_numbered(number)
            .await?
            .iter()
            .map(decode_one)
            .collect::<Result<Vec<Extension>>>()?;
        found.retain(|e| node.is_none_or(|n| e.node_name == n));
        match found.len() {
            0 => Err(StoreError::NotFound(NotFound::Extension(match node {
                Some(node) => format!("{number} on node {node}"),
                None => number.to_string(),
            }))),
            1 => Ok(found.remove(0)),
            _ => Err(StoreError::Invalid {
                field: "node",
                reason: format!(
                    "extension {number} exists on nodes {}: say which",
                    found
                        .iter()
                        .map(|e| e.node_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Every extension, failing on the first row that cannot be used. Prefer
    /// [`Store::extension_rows`], which carries on without the bad rows.
    pub async fn extensions(&self) -> Result<Vec<Extension>> {
        let rows = self.extension_rows().await?;
        match rows.bad.into_iter().next() {
            Some(bad) => Err(StoreError::BadRow(bad)),
            None => Ok(rows.good),
        }
    }

    /// Every extension that can be used, and every row that cannot (for [`Store::mark_bad_row`]),
    /// so that one row written badly by another program does not stop the others.
    pub async fn extension_rows(&self) -> Result<ExtensionRows> {
        let sql = format!("{EXTENSION_SELECT} ORDER BY n.name, length(e.number), e.number, e.id");
        // Decoded as they arrive: 100,000 rows held as the driver's rows first were a large
        // pass's peak (some 1.4 KB each).
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&self.pool);
        let mut found = ExtensionRows::default();
        while let Some(row) = rows.next().await {
            let row = match row {
                Ok(row) => row,
                // SQLite stores whatever bytes it is given; one text value that is not UTF-8
                // fails the whole read. Find that row, and read the others one by one.
                Err(e @ (sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. }))
                    if self.backend == super::Backend::Sqlite =>
                {
                    drop(rows);
                    tracing::warn!(error = %e, "a row cannot be read; reading the rows one by one");
                    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM extensions ORDER BY id")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(StoreError::Database)?;
                    return self.extension_rows_one_by_one(ids).await;
                }
                Err(e) => return Err(StoreError::Database(e)),
            };
            match decode(&row)? {
                Ok(extension) => found.good.push(extension),
                Err(bad) => found.bad.push(bad),
            }
        }
        Ok(found)
    }

    /// The rows any of `keys` names (each row once, in id order), read as
    /// [`Store::extension_rows`] reads them all: a row that cannot be used is among the bad ones.
    pub(crate) async fn extension_rows_matching(&self, keys: &RowKeys) -> Result<ExtensionRows> {
        match self.rows_matching(EXTENSION_SELECT, keys).await {
            Ok(rows) => {
                let mut found = ExtensionRows::default();
                let mut seen = HashSet::new();
                let mut rows: Vec<&AnyRow> = rows.iter().collect();
                rows.sort_by_key(|row| row.try_get::<i64, _>("id").unwrap_or(i64::MAX));
                for row in rows {
                    match decode(row)? {
                        Ok(extension) if seen.insert(extension.id) => found.good.push(extension),
                        Err(bad) if seen.insert(bad.id) => found.bad.push(bad),
                        _ => {}
                    }
                }
                Ok(found)
            }
            Err(sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. })
                if self.backend == super::Backend::Sqlite =>
            {
                let rows = self
                    .rows_matching("SELECT e.id FROM extensions e", keys)
                    .await
                    .map_err(StoreError::Database)?;
                let mut ids: Vec<i64> = rows
                    .iter()
                    .map(|row| row.try_get("id"))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(StoreError::Database)?;
                ids.sort_unstable();
                ids.dedup();
                self.extension_rows_one_by_one(ids).await
            }
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    /// `select` for each of `keys`, one indexed `IN (…)` per key kind and chunk (a row may come
    /// back more than once).
    async fn rows_matching(
        &self,
        select: &str,
        keys: &RowKeys,
    ) -> std::result::Result<Vec<AnyRow>, sqlx::Error> {
        const CHUNK: usize = 500;
        let marks = |n: usize| {
            (1..=n)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut rows = Vec::new();
        for chunk in keys.ids.chunks(CHUNK) {
            let sql = format!("{select} WHERE e.id IN ({})", marks(chunk.len()));
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            rows.extend(query.fetch_all(&self.pool).await?);
        }
        for (column, values) in [
            ("e.number", &keys.numbers),
            ("e.remote_auth_name", &keys.names),
            ("e.mbg_device_id", &keys.guids),
        ] {
            for chunk in values.chunks(CHUNK) {
                let sql = format!("{select} WHERE {column} IN ({})", marks(chunk.len()));
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for value in chunk {
                    query = query.bind(value);
                }
                rows.extend(query.fetch_all(&self.pool).await?);
            }
        }
        Ok(rows)
    }

    /// The slow path of [`Store::extension_rows`]: each row on its own, so that a row SQLite
    /// cannot hand over as text is reported, naming its column, and the others carry on.
    async fn extension_rows_one_by_one(&self, ids: Vec<i64>) -> Result<ExtensionRows> {
        const TEXT_COLUMNS: [&str; 9] = [
            "number",
            "kind",
            "sip_password",
            "remote_auth_name",
            "remote_auth_password",
            "mbg_device_id",
            "state",
            "last_error",
            "node_id",
        ];
        let mut found = ExtensionRows::default();
        for id in ids {
            let row = sqlx::query(AssertSqlSafe(format!("{EXTENSION_SELECT} WHERE e.id = $1")))
                .bind(id)
                .fetch_optional(&self.pool)
                .await;
            match row {
                Ok(Some(row)) => match decode(&row)? {
                    Ok(extension) => found.good.push(extension),
                    Err(bad) => found.bad.push(bad),
                },
                Ok(None) => {}
                Err(sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. }) => {
                    let mut column = "node";
                    for candidate in TEXT_COLUMNS {
                        let bytes: Option<Vec<u8>> = sqlx::query_scalar(AssertSqlSafe(format!(
                            "SELECT CAST({candidate} AS BLOB) FROM extensions WHERE id = $1"
                        )))
                        .bind(id)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(StoreError::Database)?;
                        if bytes.is_some_and(|b| std::str::from_utf8(&b).is_err()) {
                            column = candidate;
                            break;
                        }
                    }
                    // What can still be read: the SIP user the row holds must be left alone.
                    let text_of = |candidate: &str| {
                        let query = format!(
                            "SELECT CAST({candidate} AS BLOB) FROM extensions WHERE id = $1"
                        );
                        async move {
                            sqlx::query_scalar::<_, Option<Vec<u8>>>(AssertSqlSafe(query))
                                .bind(id)
                                .fetch_one(&self.pool)
                                .await
                                .ok()
                                .flatten()
                                .and_then(|b| String::from_utf8(b).ok())
                                .filter(|s| !s.is_empty())
                        }
                    };
                    found.bad.push(BadRow {
                        id,
                        number: text_of("number").await,
                        mbg_device_id: text_of("mbg_device_id").await,
                        column,
                        reason: "holds bytes that are not UTF-8 text".to_string(),
                    });
                }
                Err(e) => return Err(StoreError::Database(e)),
            }
        }
        Ok(found)
    }

    /// Flags a row that cannot be decoded as needing attention, with `reason` as its last error.
    /// A plain UPDATE of columns we own, so it works whatever else in the row is wrong; it also
    /// resets the retry bookkeeping, so that a bad `state`, `attempts` or `next_attempt_at` is
    /// repaired by the flagging itself. Whatever the MBG holds is left alone.
    pub async fn mark_bad_row(&self, id: i64, reason: &str) -> Result<()> {
        sqlx::query(
            "UPDATE extensions
                SET state = 'needs_attention', last_error = $2, attempts = 0, next_attempt_at = NULL
              WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        Ok(())
    }

    pub async fn delete_extension(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM extensions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        Ok(())
    }

    /// A rotation: replaces the remote credentials, with its audit row, in one transaction. The
    /// version trigger records the change, so the daemon (or the next `sync`) updates the SIP
    /// user.
    ///
    /// Refused while a pass may have left a SIP user that only the current credentials prove to
    /// be ours (a create whose guid never reached the database): the extension must be settled
    /// (no change waiting for a pass; `provisioned` with its SIP user recorded, or `idle` with
    /// none), or have no credentials yet.
    pub async fn rotate_remote_credentials(
        &self,
        id: i64,
        name: &str,
        password: &SecretString,
        audit: &AuditEntry,
    ) -> Result<Extension> {
        let current = self.extension(id).await?;
        // The MBG is told these credentials next: they must survive a power loss first.
        let mut tx = Transaction::begin(&self.pool, self.backend, Durability::Synced).await?;
        check_replaceable(&mut tx, &current).await?;
        sqlx::query(
            "UPDATE extensions SET remote_auth_name = $2, remote_auth_password = $3
              WHERE id = $1 AND version = $4",
        )
        .bind(id)
        .bind(name)
        .bind(password.expose_secret())
        .bind(current.version)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Database)
        .and_then(|done| match done.rows_affected() {
            1 => Ok(()),
            _ => Err(StoreError::InUse {
                field: "extension",
                reason: format!("{} changed meanwhile: try again", current.number),
            }),
        })?;
        let audited = [super::PassWrite::Audit(audit.clone())];
        super::outcomes::write_chunk(&mut tx, self.backend, self.fence(), &audited).await?;
        tx.commit().await?;
        self.extension(id).await
    }

    /// Records the SIP user now holding this extension (`None`: there is none any more).
    pub async fn record_device(
        &self,
        id: i64,
        mbg_device_id: Option<&str>,
        provisioned_by_us: bool,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE extensions SET mbg_device_id = $2, provisioned_by_us = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(mbg_device_id)
        .bind(provisioned_by_us && mbg_device_id.is_some())
        .execute(&self.pool)
        .await
        .map_err(|e| classify(e, |_| mbg_device_id.unwrap_or_default().to_string()))?;
        Ok(())
    }

    pub async fn set_state(&self, id: i64, update: &StateUpdate) -> Result<()> {
        sqlx::query(
            "UPDATE extensions SET state = $2, last_error = $3, attempts = $4, next_attempt_at = $5
              WHERE id = $1",
        )
        .bind(id)
        .bind(update.state.as_str())
        .bind(update.last_error.as_deref())
        .bind(i64::from(update.attempts))
        .bind(update.next_attempt_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        Ok(())
    }
}

/// Whether the remote credentials of `current` may be replaced now. Refused while a pass may
/// have left a SIP user that only the current credentials prove to be ours (a create whose guid
/// never reached the database): the extension must be settled (no change waiting for a pass;
/// `provisioned` with its SIP user recorded, or `idle` with none), or have no credentials yet.
async fn check_replaceable(tx: &mut Transaction, current: &Extension) -> Result<()> {
    let has_credentials =
        current.remote_auth_name.is_some() || current.remote_auth_password.is_some();
    if !has_credentials {
        return Ok(());
    }
    let waiting: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM extension_changes WHERE extension_id = $1")
            .bind(current.id)
            .fetch_one(&mut **tx)
            .await
            .map_err(StoreError::Database)?;
    let recorded = current.recorded_guid().is_some();
    let settled = waiting == 0
        && match current.state {
            ExtensionState::Provisioned => recorded,
            ExtensionState::Idle => current.mbg_device_id.is_none(),
            _ => false,
        };
    if settled {
        return Ok(());
    }
    Err(StoreError::NotSettled {
        number: current.number.clone(),
        why: if waiting > 0 {
            "a change to it is not applied on the MBG yet".to_string()
        } else {
            format!(
                "its SIP user is not settled on the MBG (state {})",
                current.state.as_str()
            )
        },
    })
}

async fn set_extension_in(
    tx: &mut Transaction,
    spec: &ExtensionSpec,
    new_sip_password: &SecretString,
) -> Result<(i64, bool)> {
    let (node_id, target) = target_row(tx, spec).await?;
    write_row(tx, spec, node_id, target, new_sip_password).await
}

/// The node `spec` names, and the row it changes: the number's row on that node, else the
/// number's only row (moved there); `None` when the extension is new.
async fn target_row(tx: &mut Transaction, spec: &ExtensionSpec) -> Result<(i64, Option<i64>)> {
    check_spec(spec)?;
    let node_id: i64 = sqlx::query_scalar("SELECT id FROM nodes WHERE name = $1")
        .bind(spec.node.trim())
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::Database)?
        .ok_or_else(|| StoreError::NotFound(NotFound::Node(spec.node.clone())))?;
    // Prefer the row on the requested node; otherwise the number's only row is moved there.
    let existing: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, node_id FROM extensions WHERE number = $1 ORDER BY id")
            .bind(&spec.number)
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::Database)?;
    let target = match existing.as_slice() {
        [] => None,
        [(id, _)] => Some(*id),
        many => match many.iter().find(|(_, node)| *node == node_id) {
            Some((id, _)) => Some(*id),
            None => return Err(several_nodes(&spec.number)),
        },
    };
    Ok((node_id, target))
}

/// Writes `spec` over the row `target` (or a new row on `node_id`); whether it was created.
async fn write_row(
    tx: &mut Transaction,
    spec: &ExtensionSpec,
    node_id: i64,
    target: Option<i64>,
    new_sip_password: &SecretString,
) -> Result<(i64, bool)> {
    let kind = spec.kind.map(ExtensionKind::as_str);
    let password = spec.sip_password.as_ref().map(|p| p.expose_secret());
    match target {
        Some(id) => {
            sqlx::query(
                "UPDATE extensions
                    SET node_id = $2,
                        kind = COALESCE($3, kind),
                        use_remote_auth = COALESCE($4, use_remote_auth),
                        sip_password = COALESCE($5, sip_password)
                  WHERE id = $1",
            )
            .bind(id)
            .bind(node_id)
            .bind(kind)
            .bind(spec.use_remote_auth)
            .bind(password)
            .execute(&mut **tx)
            .await
            .map_err(|e| classify(e, |_| spec.number.clone()))?;
            Ok((id, false))
        }
        None => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO extensions (node_id, number, kind, sip_password, use_remote_auth, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(node_id)
            .bind(&spec.number)
            .bind(kind.unwrap_or(ExtensionKind::Sip.as_str()))
            .bind(password.unwrap_or(new_sip_password.expose_secret()))
            .bind(spec.use_remote_auth.unwrap_or(false))
            .bind(now())
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| classify(e, |_| spec.number.clone()))?;
            Ok((id, true))
        }
    }
}

/// Rows per batched statement: 5 parameters each, well under SQLite's 32,766 and PostgreSQL's
/// 65,535 parameters per statement; larger batches gain little.
const BATCH_ROWS: usize = 2_000;
const BATCH_PARAMS: usize = 5;

/// The SIP password a batched row brings: the spec's, or a new one, used only if the row is
/// created.
enum BatchPassword<'a> {
    Given(&'a SecretString),
    New(SecretString),
}

impl BatchPassword<'_> {
    fn expose(&self) -> &str {
        match self {
            BatchPassword::Given(p) => p.expose_secret(),
            BatchPassword::New(p) => p.expose_secret(),
        }
    }
}

/// A checked spec waiting to be written, with its index for an error.
struct BatchRow<'a> {
    index: usize,
    node_id: i64,
    spec: &'a ExtensionSpec,
    password: BatchPassword<'a>,
}

/// Which fields a spec gives: the columns its row's `DO UPDATE` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Given {
    kind: bool,
    use_remote_auth: bool,
    sip_password: bool,
}

impl Given {
    fn of(spec: &ExtensionSpec) -> Given {
        Given {
            kind: spec.kind.is_some(),
            use_remote_auth: spec.use_remote_auth.is_some(),
            sip_password: spec.sip_password.is_some(),
        }
    }
}

/// Rows waiting to be written, one batch per [`Given`] (an import file makes one to four).
///
/// Each batch is one statement whose inserted row is what a new extension gets (the spec's
/// fields, else kind `sip`, remote off and a new SIP password) and whose `DO UPDATE` sets only the
/// fields the spec gives, so an existing row keeps the others. So the statement is right whether
/// the row exists or not, with no lookup (or join) of the stored row. The `DO UPDATE … WHERE`
/// leaves a row that would not change unwritten (the triggers would record no change for it).
struct Batches<'a> {
    backend: Backend,
    batches: HashMap<Given, Vec<BatchRow<'a>>>,
    numbers: HashSet<&'a str>,
}

impl<'a> Batches<'a> {
    fn new(backend: Backend) -> Self {
        Batches {
            backend,
            batches: HashMap::new(),
            numbers: HashSet::new(),
        }
    }

    fn holds(&self, number: &str) -> bool {
        self.numbers.contains(number)
    }

    async fn push(
        &mut self,
        tx: &mut Transaction,
        row: BatchRow<'a>,
    ) -> Result<(), (usize, StoreError)> {
        let given = Given::of(row.spec);
        self.numbers.insert(&row.spec.number);
        let batch = self.batches.entry(given).or_default();
        batch.push(row);
        if batch.len() == BATCH_ROWS {
            let full = std::mem::take(batch);
            for row in &full {
                self.numbers.remove(row.spec.number.as_str());
            }
            write_batch(tx, self.backend, given, &full).await?;
        }
        Ok(())
    }

    async fn write_all(&mut self, tx: &mut Transaction) -> Result<(), (usize, StoreError)> {
        for (given, batch) in self.batches.drain() {
            write_batch(tx, self.backend, given, &batch).await?;
        }
        self.numbers.clear();
        Ok(())
    }
}

/// Writes one batch with one statement.
async fn write_batch(
    tx: &mut Transaction,
    backend: Backend,
    given: Given,
    batch: &[BatchRow<'_>],
) -> Result<(), (usize, StoreError)> {
    let Some(first) = batch.first() else {
        return Ok(());
    };
    // SQLite looks a named parameter (`$N`) up by scanning a list of all of them, which makes
    // binding a statement quadratic in its parameters (seconds per 10,000); plain `?` are bound
    // by position. Each parameter is used once, in order, so both spellings mean the same.
    let values: Vec<String> = (0..batch.len())
        .map(|row| match backend {
            Backend::Sqlite => "(?, ?, ?, ?, ?)".to_string(),
            Backend::Postgres => {
                let p = row * BATCH_PARAMS;
                format!(
                    "(${}, ${}, ${}, ${}, ${})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5
                )
            }
        })
        .collect();
    let columns: Vec<&str> = [
        (given.kind, "kind"),
        (given.use_remote_auth, "use_remote_auth"),
        (given.sip_password, "sip_password"),
    ]
    .into_iter()
    .filter_map(|(is_given, column)| is_given.then_some(column))
    .collect();
    let on_conflict = if columns.is_empty() {
        "DO NOTHING".to_string()
    } else {
        let set: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let differs: Vec<String> = columns
            .iter()
            .map(|c| format!("extensions.{c} <> excluded.{c}"))
            .collect();
        format!(
            "DO UPDATE SET {} WHERE {}",
            set.join(", "),
            differs.join(" OR ")
        )
    };
    let sql = format!(
        "INSERT INTO extensions (node_id, number, kind, use_remote_auth, sip_password)
         VALUES {}
         ON CONFLICT (node_id, number) {on_conflict}",
        values.join(", ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(backend.keeps_list_statements());
    for row in batch {
        query = query
            .bind(row.node_id)
            .bind(row.spec.number.as_str())
            .bind(row.spec.kind.unwrap_or(ExtensionKind::Sip).as_str())
            .bind(row.spec.use_remote_auth.unwrap_or(false))
            .bind(row.password.expose());
    }
    // Which row a constraint refused is not known; name the batch's first.
    query
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(|e| (first.index, classify(e, |_| first.spec.number.clone())))
}

/// Moves the number's row from `from` to the spec's node, applying the spec as
/// [`set_extension_in`] does.
async fn move_extension_in(
    tx: &mut Transaction,
    spec: &ExtensionSpec,
    from: i64,
    to: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE extensions
            SET node_id = $3,
                kind = COALESCE($4, kind),
                use_remote_auth = COALESCE($5, use_remote_auth),
                sip_password = COALESCE($6, sip_password)
          WHERE node_id = $1 AND number = $2",
    )
    .bind(from)
    .bind(&spec.number)
    .bind(to)
    .bind(spec.kind.map(ExtensionKind::as_str))
    .bind(spec.use_remote_auth)
    .bind(spec.sip_password.as_ref().map(|p| p.expose_secret()))
    .execute(&mut **tx)
    .await
    .map_err(|e| classify(e, |_| spec.number.clone()))?;
    Ok(())
}

/// What the store refuses before any SQL runs.
fn check_spec(spec: &ExtensionSpec) -> Result<()> {
    validate_number(&spec.number)?;
    if let Some(password) = &spec.sip_password
        && password.expose_secret().is_empty()
    {
        return Err(StoreError::Invalid {
            field: "SIP password",
            reason: "must not be empty".into(),
        });
    }
    Ok(())
}

fn several_nodes(number: &str) -> StoreError {
    StoreError::Invalid {
        field: "extension number",
        reason: format!("{number} exists on several nodes; give the node it is on"),
    }
}
