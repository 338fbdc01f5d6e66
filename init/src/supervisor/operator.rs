//! The `berthctl` verbs that act on one container: `exec`, `stop`, `start`, `restart`.
//! None waits for the container: `stop` and `restart` ask its state machine, and the
//! control answers the client once [`Supervisor::settled`] says the stop is over.

use std::time::Instant;

use nix::unistd::Pid;

use super::exec::{self, ExecIo};
use super::lifecycle::{Reason, State, Then};
use super::policy::{self, Backoff};
use super::Supervisor;
use crate::event::Event;

/// Why an operator's request about a container is refused; its `code` is the control
/// reply's.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("no container `{0}`")]
    NotFound(String),
    #[error("container `{name}` is {state}")]
    Conflict { name: String, state: &'static str },
    #[error("{0}")]
    Failed(String),
}

impl OperatorError {
    pub fn code(&self) -> berth_control::ErrorCode {
        match self {
            OperatorError::NotFound(_) => berth_control::ErrorCode::NotFound,
            OperatorError::Conflict { .. } => berth_control::ErrorCode::Conflict,
            OperatorError::Failed(_) => berth_control::ErrorCode::Internal,
        }
    }
}

impl Supervisor {
    /// `berthctl exec`: starts `args` in the running container `name`.
    pub fn exec(
        &mut self,
        name: &str,
        args: Vec<String>,
        user: Option<String>,
        env: Vec<String>,
        workdir: Option<String>,
        io: ExecIo,
    ) -> Result<Pid, OperatorError> {
        let index = self.index_of(name)?;
        let c = self
            .containers
            .get(index)
            .ok_or_else(|| OperatorError::NotFound(name.to_string()))?;
        let pid = exec::start(c, args, user, env, workdir, io).map_err(OperatorError::Failed)?;
        Event::new("exec")
            .field("container", name)
            .field("pid", pid)
            .emit();
        Ok(pid)
    }

    /// `berthctl stop`: stops the container with its stop signal and grace period and keeps
    /// it stopped (across reboots too for `unless-stopped`) until an operator starts it.
    pub fn operator_stop(&mut self, name: &str) -> Result<(), OperatorError> {
        let index = self.index_of(name)?;
        if let Some(c) = self.containers.get_mut(index) {
            c.stopped_by_operator = true;
        }
        policy::remember_operator_stop(name, true);
        self.request_stop(
            index,
            Then::Stay(Reason::Operator),
            "operator",
            Instant::now(),
        );
        Ok(())
    }

    /// `berthctl start`: starts a container that is not running, as soon as its dependencies
    /// allow.
    pub fn operator_start(&mut self, name: &str) -> Result<(), OperatorError> {
        let index = self.index_of(name)?;
        let Some(c) = self.containers.get_mut(index) else {
            return Err(OperatorError::NotFound(name.to_string()));
        };
        let conflict = |state| OperatorError::Conflict {
            name: name.to_string(),
            state,
        };
        match c.state {
            State::Running { .. } => return Err(conflict("running")),
            State::Stopping { .. } => return Err(conflict("stopping")),
            _ => {}
        }
        c.stopped_by_operator = false;
        policy::remember_operator_stop(name, false);
        c.backoff = c
            .config
            .restart_delay
            .map_or_else(Backoff::default, |d| Backoff::starting_at(d.0));
        c.state = State::Waiting;
        c.waiting_reported = false;
        self.advance(Instant::now());
        Ok(())
    }

    /// `berthctl restart`: a running container stops with its stop signal and grace period
    /// and starts again at once; one that does not run starts.
    pub fn operator_restart(&mut self, name: &str) -> Result<(), OperatorError> {
        let index = self.index_of(name)?;
        let Some(c) = self.containers.get_mut(index) else {
            return Err(OperatorError::NotFound(name.to_string()));
        };
        if !c.is_live() {
            return self.operator_start(name);
        }
        c.stopped_by_operator = false;
        c.operator_restart = true;
        policy::remember_operator_stop(name, false);
        self.request_stop(index, Then::Restart, "restart", Instant::now());
        Ok(())
    }
}
