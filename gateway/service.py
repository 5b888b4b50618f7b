"""Start and stop the whole service: the Thespian actor system, the gateway actor, the workers.

This is what ``run.py`` calls. It runs in the main process, outside any actor, and talks to the
gateway with Thespian's ``ask``.
"""

from __future__ import annotations

from loguru import logger
from thespian.actors import ActorSystem

from actors.messages import GatewayStarted, GatewayStopped, StartGateway, StopGateway
from actors.node import SYSTEM_BASE, NodeError, start_system
from config.settings import Settings
from gateway.actor import GatewayActor


class ServiceError(RuntimeError):
    """The service could not start; the message says why and what to do."""


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded_model = None
        self.system: ActorSystem | None = None
        self.gateway = None
        self.url: str | None = None

    def start(self) -> str:
        """Start everything and return the gateway's base URL once it accepts connections."""
        s = self.settings
        try:
            self.settings = s = self._provider(s)
            logger.info("starting actor system ({}, admin port {}, node {})", SYSTEM_BASE, s.admin_port, s.node)
            try:
                self.system = start_system(s)
            except NodeError as exc:
                raise ServiceError(str(exc)) from None
            self.gateway = self.system.createActor(GatewayActor)
            reply = self.system.ask(self.gateway, StartGateway(s), s.startup_timeout_s)
            if not isinstance(reply, GatewayStarted):
                reason = getattr(reply, "reason", None) or f"no answer within {s.startup_timeout_s} s"
                raise ServiceError(f"the gateway did not start: {reason}")
        except BaseException:
            self.stop()
            raise
        self.url = reply.url
        logger.info("NPC turn server ready at {} with {} workers", reply.url, reply.workers)
        return reply.url

    def _provider(self, s: Settings) -> Settings:
        """The LLM endpoint: the configured one, or the embedded demo model started here."""
        if s.llm_base_url:
            return s.replace(llm_grammar="off") if s.llm_grammar == "auto" else s
        from providers.embedded import LocalModelProcess

        logger.warning(
            "no LLM endpoint configured (OPENAI_API_BASE): using the embedded demo model, "
            "a tiny 135M model for trying things out; see the README to use a real one"
        )
        self.embedded_model = LocalModelProcess(threads=s.embedded_model_threads or None)
        try:
            url = self.embedded_model.start()
        except RuntimeError as exc:
            raise ServiceError(str(exc)) from None
        return s.replace(
            llm_base_url=url,
            llm_grammar="on" if s.llm_grammar == "auto" else s.llm_grammar,
            history_budget_chars=s.embedded_history_budget_chars,
            llm_max_tokens=s.embedded_max_tokens,
        )

    def stop(self) -> None:
        """Close connections (logs get written), then shut the actor system and every process down."""
        system, self.system = self.system, None
        try:
            if system is not None and self.gateway is not None and self.url is not None:
                reply = system.ask(self.gateway, StopGateway(), 20)
                if not isinstance(reply, GatewayStopped):
                    logger.warning("the gateway did not confirm a clean stop")
        finally:
            if system is not None:
                system.shutdown()
                logger.info("actor system stopped")
            if self.embedded_model is not None:
                self.embedded_model.stop()
