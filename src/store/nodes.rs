use sqlx::Row;
use sqlx::any::AnyRow;

use super::error::{classify, quote};
use super::transaction::{Durability, Transaction};
use super::{NewNode, Node, NodeChange, NotFound, RecordedIcp, Result, Store, StoreError};

const NODE_COLUMNS: &str = "id, name, address, nat_address, nat_sip_port";

fn node_from_row(row: &AnyRow) -> Result<Node, sqlx::Error> {
    Ok(Node {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        address: row.try_get("address")?,
        nat_address: row.try_get("nat_address")?,
        nat_sip_port: row
            .try_get::<Option<i64>, _>("nat_sip_port")?
            .and_then(|p| u16::try_from(p).ok()),
    })
}

/// An address the MBG's ICP list or a phone could hold: an IP address or a host name. `field`
/// names it in the error (the CLI's option, the console's field).
pub fn validate_address(field: &'static str, address: &str) -> Result<()> {
    let is_host_name = !address.is_empty()
        && address.len() <= 253
        && address.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !address.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if address.parse::<std::net::IpAddr>().is_ok() || is_host_name {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field,
            reason: format!("{} is not an IP address or host name", quote(address)),
        })
    }
}

impl Store {
    pub async fn add_node(&self, node: &NewNode) -> Result<Node> {
        validate_address("node address", node.address.trim())?;
        if let Some(nat) = &node.nat_address {
            validate_address("node NAT address", nat.trim())?;
        }
        let row = sqlx::query(
            "INSERT INTO nodes (name, address, nat_address, nat_sip_port) VALUES ($1, $2, $3, $4)
             RETURNING id, name, address, nat_address, nat_sip_port",
        )
        .bind(node.name.trim())
        .bind(node.address.trim())
        .bind(node.nat_address.as_deref())
        .bind(node.nat_sip_port.map(i64::from))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            classify(e, |field| match field {
                "node address" => node.address.clone(),
                _ => node.name.clone(),
            })
        })?;
        node_from_row(&row).map_err(StoreError::Database)
    }

    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        rows.iter()
            .map(node_from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::Database)
    }

    pub async fn node_by_name(&self, name: &str) -> Result<Node> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE name = $1"
        )))
        .bind(name.trim())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::Database)?;
        match row {
            Some(row) => node_from_row(&row).map_err(StoreError::Database),
            None => Err(StoreError::NotFound(NotFound::Node(name.to_string()))),
        }
    }

    /// Changes what is given of a node, keeping the rest. A new address is a change to each of
    /// the node's extensions (the trigger of migration 0003): they move to the ICP it matches.
    pub async fn update_node(&self, name: &str, change: &NodeChange) -> Result<Node> {
        if let Some(address) = &change.address {
            validate_address("node address", address.trim())?;
        }
        if let Some(nat) = &change.nat_address {
            validate_address("node NAT address", nat.trim())?;
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE nodes
                SET address = COALESCE($2, address),
                    nat_address = COALESCE($3, nat_address),
                    nat_sip_port = COALESCE($4, nat_sip_port)
              WHERE name = $1
             RETURNING {NODE_COLUMNS}"
        )))
        .bind(name.trim())
        .bind(change.address.as_deref().map(str::trim))
        .bind(change.nat_address.as_deref().map(str::trim))
        .bind(change.nat_sip_port.map(i64::from))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| {
            classify(e, |field| match field {
                "node address" => change.address.clone().unwrap_or_default(),
                _ => name.to_string(),
            })
        })?;
        match row {
            Some(row) => node_from_row(&row).map_err(StoreError::Database),
            None => Err(StoreError::NotFound(NotFound::Node(name.to_string()))),
        }
    }

    /// Deletes a node; refused while extensions still live on it.
    pub async fn delete_node(&self, name: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM nodes WHERE name = $1")
            .bind(name.trim())
            .execute(&self.pool)
            .await
            .map_err(|e| classify(e, |_| name.to_string()))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(NotFound::Node(name.to_string())));
        }
        Ok(())
    }

    /// Replaces the recorded ICP list with `icps`, as the MBG listed them (one transaction: a
    /// reader sees the old list or the new one, never half of each).
    pub(crate) async fn record_icps(&self, icps: &[RecordedIcp]) -> Result<()> {
        let mut tx = Transaction::begin(&self.pool, self.backend, Durability::Normal).await?;
        sqlx::query("DELETE FROM mbg_icps")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
        for icp in icps {
            sqlx::query(
                "INSERT INTO mbg_icps (guid, name, address, seen_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&icp.guid)
            .bind(&icp.name)
            .bind(&icp.address)
            .bind(icp.seen_at)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Database)?;
        }
        tx.commit().await
    }

    /// The ICPs as the leader last listed them (empty before its first full read), by name.
    pub(crate) async fn recorded_icps(&self) -> Result<Vec<RecordedIcp>> {
        let rows = sqlx::query("SELECT guid, name, address, seen_at FROM mbg_icps ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::Database)?;
        rows.iter()
            .map(|row| {
                Ok(RecordedIcp {
                    guid: row.try_get("guid")?,
                    name: row.try_get("name")?,
                    address: row.try_get("address")?,
                    seen_at: row.try_get("seen_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::Database)
    }
}
