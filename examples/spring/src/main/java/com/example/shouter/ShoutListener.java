package com.example.shouter;

import java.util.Locale;

import org.springframework.context.annotation.Profile;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.messaging.Message;
import org.springframework.messaging.MessageHeaders;
import org.springframework.messaging.handler.annotation.SendTo;
import org.springframework.messaging.support.MessageBuilder;
import org.springframework.stereotype.Component;
import org.springframework.util.MimeTypeUtils;

/**
 * Shouts back what it is told: {@code {"text":"hello"}} gets
 * {@code {"text":"HELLO!"}}. The reply goes to the request's
 * {@code kafka_replyTopic} with its {@code kafka_correlationId}, as
 * {@code @SendTo} without a topic does; the {@code status} header says how
 * the request went.
 */
@Component
@Profile("listener")
class ShoutListener {

    record Words(String text) {
    }

    record Shout(String text) {
    }

    record Refusal(String error) {
    }

    @KafkaListener(id = "shouter", topics = "${shouter.topic}")
    @SendTo
    Message<?> shout(Words words) {
        if (words.text() == null || words.text().isBlank()) {
            return reply(422, new Refusal("nothing to shout"));
        }
        return reply(200, new Shout(words.text().toUpperCase(Locale.ROOT) + "!"));
    }

    private static Message<?> reply(int status, Object body) {
        return MessageBuilder.withPayload(body)
                .setHeader("status", String.valueOf(status))
                .setHeader(MessageHeaders.CONTENT_TYPE, MimeTypeUtils.APPLICATION_JSON_VALUE)
                .build();
    }
}
