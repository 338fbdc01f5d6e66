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
    ) -> Result<Pid, String> {
        let index = self.index_of(name)?;
        let c = self
            .containers
            .get(index)
            .ok_or_else(|| format!("no container `{name}`"))?;
        let pid = exec::start(c, args, user, env, workdir, io)?;
        Event::new("exec")
            .field("container", name)
            .field("pid", pid)
            .emit();
        Ok(pid)
    }

    /// `berthctl stop`: stops the container with its stop signal and grace period and keeps
    /// it stopped (across reboots too for `unless-stopped`) until an operator starts it.
    pub fn operator_stop(&mut self, name: &str) -> Result<(), String> {
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
    pub fn operator_start(&mut self, name: &str) -> Result<(), String> {
        let index = self.index_of(name)?;
        let Some(c) = self.containers.get_mut(index) else {
            return Err(format!("no container `{name}`"));
        };
        match c.state {
            State::Running { .. } => return Err(format!("container `{name}` is running")),
            State::Stopping { .. } => return Err(format!("container `{name}` is stopping")),
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
    pub fn operator_restart(&mut self, name: &str) -> Result<(), String> {
        let index = self.index_of(name)?;
        let Some(c) = self.containers.get_mut(index) else {
            return Err(format!("no container `{name}`"));
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
